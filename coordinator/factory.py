"""Build a StateCoordinator (its Redis projector and its writer lease) from Services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from coordinator.writer import StateCoordinator
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.writer_lease import WriterLease
from echelon_platform.config import Settings


@asynccontextmanager
async def coordinator_for(services: Services, settings: Settings) -> AsyncIterator[StateCoordinator]:
    """A coordinator that appends only while it holds the partition's writer lease (else it stands by)."""
    async with (
        Projector(str(settings.redis_url), settings.redis_prefix) as projector,
        WriterLease(str(settings.database_url), settings.writer_partition, ttl_s=settings.lease_ttl_s) as lease,
    ):
        yield StateCoordinator(
            bus=services.bus,
            store=services.store,
            projector=projector,
            metrics=services.metrics,
            durable=f"{settings.consumer_prefix}-coordinator",
            batch_size=settings.coordinator_batch,
            fetch_timeout_s=settings.fetch_timeout_s,
            ack_wait_s=settings.ack_wait_s,
            secrets=services.secrets,
            lease=lease,
        )
