"""The coordinator survives a NATS restart and a Postgres restart without operator action.

These tests start their own servers (they must restart them), beside the session's shared ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from coordinator.assembly import coordinator_for
from echelon.embedded import EmbeddedNats, EmbeddedPostgres, create_database
from echelon_platform.adapters.migrations import migrate
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.factories import run_events
from tests.helpers import wait_for


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    async with EmbeddedPostgres(tmp_path / "pg") as server:
        yield server


async def _projected(services: Services, run_id: str, progress: int) -> bool:
    state = await services.read_models.get_run(run_id)
    return state is not None and state.progress == progress


async def test_coordinator_survives_a_nats_restart(settings: Settings, own_nats: EmbeddedNats) -> None:
    settings = settings.model_copy(update={"nats_url": own_nats.url})
    async with (
        Services(settings, name="test") as services,
        coordinator_for(services, settings) as coordinator,
    ):
        task = asyncio.create_task(coordinator.run())
        try:
            before, after = run_events("BEFORE", n=2, failed=0), run_events("AFTER", n=3, failed=0)
            for e in before:
                await services.bus.publish(e)
            await wait_for(lambda: _projected(services, "BEFORE", 2), what="events before the restart")

            await own_nats.restart()
            await wait_for(lambda: services.bus.connected, what="client reconnected")
            for e in after:
                await services.bus.publish(e)
            await wait_for(lambda: _projected(services, "AFTER", 3), timeout=30, what="events after the restart")
            # Each run's certifier trigger is logged too (its publish may be retried across the restart).
            expected = len(before) + len(after) + 2

            async def all_logged() -> bool:
                return await services.store.count() >= expected

            await wait_for(all_logged, timeout=30, what="certifier triggers logged")
        finally:
            coordinator.stop()
            await asyncio.wait_for(task, 10)
        # Every event once, plus each run's certifier trigger: nothing doubled.
        assert await services.store.count() == expected


async def test_terminated_postgres_connections_are_retried_not_fatal(settings: Settings) -> None:
    """`pg_terminate_backend` under load used to end the coordinator (exit 0) with runs stuck."""
    async with (
        Services(settings, name="test") as services,
        coordinator_for(services, settings) as coordinator,
    ):
        task = asyncio.create_task(coordinator.run())
        admin = await asyncpg.connect(settings.database_url)
        try:
            runs = [f"TERM{i}" for i in range(12)]
            for i, run_id in enumerate(runs):
                for e in run_events(run_id, n=2, failed=0):
                    await services.bus.publish(e)
                if i % 3 == 2:
                    await admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )

            async def all_projected() -> bool:
                return all([await _projected(services, r, 2) for r in runs])

            await wait_for(all_projected, timeout=60, what="every run projected despite terminated connections")
            assert not task.done()  # still the writer
        finally:
            await admin.close()
            coordinator.stop()
            await asyncio.wait_for(task, 15)
        assert task.exception() is None


async def test_coordinator_survives_a_postgres_restart(settings: Settings, own_postgres: EmbeddedPostgres) -> None:
    db_url = await create_database(own_postgres.url, "echelon_restart")
    await migrate(db_url)
    settings = settings.model_copy(update={"database_url": db_url})
    async with (
        Services(settings, name="test") as services,
        coordinator_for(services, settings) as coordinator,
    ):
        task = asyncio.create_task(coordinator.run())
        try:
            for e in run_events("PG1", n=1, failed=0):
                await services.bus.publish(e)
            await wait_for(lambda: _projected(services, "PG1", 1), what="events before the restart")

            await own_postgres.stop()
            # Published while Postgres is down: held un-acked, then committed once it is back.
            events = run_events("PG2", n=2, failed=1)
            for e in events:
                await services.bus.publish(e)
            await own_postgres.start()
            await wait_for(lambda: _projected(services, "PG2", 2), timeout=40, what="events after the restart")
        finally:
            coordinator.stop()
            await asyncio.wait_for(task, 10)
        stored = {e.event_id for e in await services.store.run_events("PG2")}
        assert {e.event_id for e in events} <= stored
        assert not task.exception()
