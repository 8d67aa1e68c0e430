"""Who may publish what on the bus: the one table of NATS users (roles) and the topics each may publish.

The NATS server enforces it (per-user publish permissions), so a role cannot put another role's events on
the stream at all: the API cannot publish `verify.certificate.issued`, only the certify stage can, and the
writer therefore never sees a certificate that did not come from the certifier. Subscribing is not
restricted (every role reads the stream). The JetStream API each role may use (its own consumers; only
SETUP creates streams and consumers) is derived in bus_access.py. A stage's row comes from the stage table
(stages.py). Pure: the embedded server and deploy/
render their `authorization` blocks from these tables, and tests check them against the topic registry.
"""

from __future__ import annotations

from enum import StrEnum

from echelon_platform.domain.events import TOPICS, Payload, Subjects
from echelon_platform.domain.partitions import Partitioning
from echelon_platform.domain.stages import BY_NAME, PRODUCERS, STAGES, WATCHDOG_EMITS


class Role(StrEnum):
    """A NATS user; its name is the user name."""

    API = "api"
    INGEST = "ingest"
    INVOKE = "invoke"
    SCORE = "score"
    CERTIFY = "certify"
    COORDINATOR = "coordinator"
    # Ingest, invoke and score in one process, plus the watchdog: everything but the certifier's topics.
    STAGES = "stages"
    # Reads only (tail, rebuild): publishes no event.
    READER = "reader"
    # `echelon parked retry` re-publishes stored bytes on their original subject, whatever the topic.
    OPERATOR = "operator"
    # Creates and updates the stream and the durable consumers (`echelon setup`, `stack up`); no events.
    SETUP = "setup"


def _topics(models: tuple[type[Payload], ...]) -> frozenset[str]:
    return frozenset(m.TOPIC for m in models)


PUBLISHES: dict[Role, frozenset[str]] = {
    # An admin registers a new methodology version through the API; the writer announces certify work.
    **{Role(p.role): _topics(p.emits) for p in PRODUCERS if p.role is not None},
    # A stage's user publishes what the stage emits, and what the watchdog emits: the watchdog runs in every
    # worker process and ends stalled runs, so every stage role may fail a run.
    **{Role(s.role): _topics(s.emits + WATCHDOG_EMITS) for s in STAGES},
    Role.READER: frozenset(),
    Role.SETUP: frozenset(),
    Role.OPERATOR: frozenset(TOPICS),
}
# The stages that may share a process connect as one user holding the union of their rights.
PUBLISHES[Role.STAGES] = frozenset().union(*(PUBLISHES[Role(s.role)] for s in STAGES if not s.alone))

STAGE_ROLES: dict[str, Role] = {s.name: Role(s.role) for s in STAGES}


def stage_groups(stages: tuple[str, ...] | list[str]) -> list[tuple[Role, tuple[str, ...]]]:
    """Split a worker process's stages into connections: the certifier alone, the others together."""
    chosen = tuple(dict.fromkeys(stages))
    others = tuple(s for s in chosen if not BY_NAME[s].alone)
    groups = [(role_for_stages(others), others)] if others else []
    groups += [(STAGE_ROLES[s], (s,)) for s in chosen if BY_NAME[s].alone]
    return groups


def role_for_stages(stages: tuple[str, ...] | list[str]) -> Role:
    """The role of a worker process running `stages` (plus the watchdog, which publishes run.failed).

    Certify shares a process with no other stage: that would give the others the certifier's rights."""
    chosen = set(stages)
    for name in chosen:
        if BY_NAME[name].alone and chosen != {name}:
            raise ValueError(f"the {name} stage runs in a process of its own (its own NATS user)")
    if len(chosen) == 1:
        return STAGE_ROLES[next(iter(chosen))]
    return Role.STAGES


def publish_subjects(role: Role, subject_root: str = "verify", partitions: int = 1) -> list[str]:
    """The event subjects `role` may publish to, under `subject_root` (sorted). The JetStream API subjects
    it may use besides are `bus_access.jetstream_subjects`; no role may publish to `_INBOX.>`: a reply
    forged into another client's inbox (a pull consumer's deliveries) could pass for the server's."""
    subjects = Subjects(subject_root, Partitioning(partitions))
    if role is Role.OPERATOR:
        topics = [subjects.everything]
    else:
        topics = sorted(f for topic in PUBLISHES[role] for f in subjects.publish_filters(topic))
    return topics
