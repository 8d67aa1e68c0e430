"""Build StateCoordinators (each with its Redis projector and writer lease) from Services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import structlog

from coordinator.admission import Admission, TrustedKeys
from coordinator.writer import CoordinatorStats, StateCoordinator
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.writer_lease import WriterLease
from echelon_platform.config import Settings
from echelon_platform.errors import InfrastructureError
from echelon_platform.retry import Backoff

log = structlog.get_logger(__name__)


@asynccontextmanager
async def coordinator_for(
    services: Services, settings: Settings, partition: int | None = None
) -> AsyncIterator[StateCoordinator]:
    """A coordinator that appends `partition` (default: the first this process stands for) only while it
    holds that partition's writer lease (else it stands by)."""
    chosen = settings.writer_partition_ids[0] if partition is None else partition
    async with (
        Projector(
            str(settings.redis_url), settings.redis_prefix, partition=chosen, partitioning=settings.partitioning
        ) as projector,
        WriterLease(str(settings.database_url), settings.lease_name(chosen), ttl_s=settings.lease_ttl_s) as lease,
    ):
        yield StateCoordinator(
            bus=services.bus,
            store=services.store,
            projector=projector,
            metrics=services.metrics,
            durable=settings.writer_durable(chosen),
            batch_size=settings.coordinator_batch,
            fetch_timeout_s=settings.fetch_timeout_s,
            ack_wait_s=settings.ack_wait_s,
            secrets=services.secrets,
            lease=lease,
            partition=chosen,
            admission=Admission(services.store, TrustedKeys.published(services.store, settings)),
            unknown_run_grace_s=settings.unknown_run_grace_s,
        )


class Coordinators:
    """The writers of every partition this process stands for (`ECHELON_WRITER_PARTITIONS`), run together;
    each stands by until it holds its own partition's lease."""

    def __init__(self, members: Sequence[StateCoordinator]) -> None:
        self.members = list(members)

    async def run(self, *, until_idle: bool = False) -> list[CoordinatorStats]:
        return list(await asyncio.gather(*(_keep_running(c, until_idle) for c in self.members)))

    def stop(self) -> None:
        for member in self.members:
            member.stop()


async def _keep_running(member: StateCoordinator, until_idle: bool) -> CoordinatorStats:
    """A writer whose loop ends with an infrastructure error (the writer retries its own steps; this covers
    any it does not) stands by again after a backoff: the process stays up, nothing un-appended was acked."""
    backoff = Backoff(base=0.5, cap=30.0)
    while True:
        try:
            return await member.run(until_idle=until_idle)
        except InfrastructureError as exc:
            if member.stopping.is_set():
                raise
            log.error("coordinator.restarting", partition=member.partition, error=str(exc) or repr(exc))
            await backoff.wait(member.stopping)


@asynccontextmanager
async def coordinators_for(services: Services, settings: Settings) -> AsyncIterator[Coordinators]:
    async with AsyncExitStack() as stack:
        members = [
            await stack.enter_async_context(coordinator_for(services, settings, k))
            for k in settings.writer_partition_ids
        ]
        yield Coordinators(members)
