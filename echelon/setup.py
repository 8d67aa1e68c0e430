"""`echelon setup`: create or update the stream and every durable consumer, as the NATS SETUP role.

The roles may only bind to what this creates (echelon_platform/domain/bus_access.py). `echelon stack up`
runs it at every start; a deployment running roles apart runs it before them and again whenever a role
exits saying the stream or its consumer is missing (`bus.setup_missing`). Idempotent.
"""

from __future__ import annotations

import structlog

from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.services import nats_credentials
from echelon_platform.config import Settings
from echelon_platform.domain.bus_access import STAGE_TOPICS, may_provision, stage_durable
from echelon_platform.domain.events import Subjects
from echelon_platform.domain.roles import Role
from echelon_platform.errors import ConfigError

log = structlog.get_logger(__name__)


def setup_bus(settings: Settings) -> Bus:
    """A bus logged in as the SETUP role (or the configured single user), allowed to provision."""
    user, password = nats_credentials(settings, Role.SETUP)
    return Bus(
        str(settings.nats_url),
        stream=settings.stream_name,
        subjects=Subjects(settings.subject_root, settings.partitioning),
        duplicate_window_s=settings.duplicate_window_s,
        max_age_s=settings.stream_max_age_s,
        replicas=settings.stream_replicas,
        name="echelon-setup",
        user=user,
        password=password,
        provisions=True,
    )


def may_set_up(settings: Settings) -> bool:
    """Whether this process holds credentials that may provision: `stack up` has the setup role's, but
    `echelon coordinator` logged in as `coordinator` (ECHELON_NATS_USER) has not, and leaves it to setup."""
    try:
        user, _ = nats_credentials(settings, Role.SETUP)
    except ConfigError:  # a credentials file without the setup role
        return False
    if user is None and settings.nats_role_passwords:
        return False  # role passwords, but none for setup
    return may_provision(user)


async def set_up_if_allowed(settings: Settings) -> None:
    """`set_up` when this process may (see `may_set_up`); otherwise say that `echelon setup` must run."""
    if may_set_up(settings):
        await set_up(settings)
    else:
        log.info("setup.skipped", reason="no NATS credentials of the setup role; run `echelon setup`")


async def set_up(settings: Settings) -> list[str]:
    """Create or update the stream (on enter) and the consumers; returns the consumers' names."""
    names: list[str] = []
    async with setup_bus(settings) as bus:
        for k in settings.partitioning.indices:
            # Created if missing, never updated: a writer may have rewound it to start at its ack floor.
            durable = settings.writer_durable(k)
            await bus.ensure_consumer(
                durable, bus.subjects.partition_filter(k), ack_wait_s=settings.ack_wait_s, max_deliver=-1
            )
            names.append(durable)
        for stage, topic in STAGE_TOPICS.items():
            durable = stage_durable(settings.consumer_prefix, stage)
            # max_deliver -1: the stage counts real failures itself (pipeline_workers/stage.py).
            await bus.apply_consumer(
                durable, bus.subjects.topic_filter(topic), ack_wait_s=settings.ack_wait_s, max_deliver=-1
            )
            names.append(durable)
    log.info("setup.done", stream=settings.stream_name, consumers=names)
    return names
