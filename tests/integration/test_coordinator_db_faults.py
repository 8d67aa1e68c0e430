"""A coordinator process rides out database faults (README "Guarantees": infrastructure errors are retried with
backoff): a `LOCK TABLE events` held past the statement timeout, and `pg_terminate_backend` of its
connections. It stays up, retries, and appends every event once the fault is gone: none lost, none twice."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from tests.factories import run_events
from tests.helpers import wait_for
from tests.integration.test_role_exit_codes import start_role

STATEMENT_TIMEOUT_S = 0.5


async def appended(services: Services, events: list[Envelope]) -> bool:
    rows = await services.store.has_dedup_keys([e.dedup_key for e in events])
    return len(rows) == len(events)


async def test_the_coordinator_retries_through_a_table_lock_and_terminated_connections(
    settings: Settings, services: Services, tmp_path: Path
) -> None:
    log_path = tmp_path / "coordinator.log"
    env = {"ECHELON_PG_STATEMENT_TIMEOUT_S": str(STATEMENT_TIMEOUT_S)}
    proc = await start_role(settings, log_path, "coordinator", env=env)
    admin = await asyncpg.connect(str(settings.database_url))
    try:
        first = run_events("FIRST", n=2, failed=0)
        await services.bus.publish_many(first)
        await wait_for(lambda: appended(services, first), timeout=60, what="the coordinator appending")

        # A lock held for several statement timeouts: every read and append of the writer is cancelled
        # meanwhile (QueryCanceledError), both while idle (catching up) and with a batch in hand.
        during = run_events("LOCKED", n=2, failed=0)

        def timeouts() -> int:
            assert proc.returncode is None, f"the coordinator exited:\n{log_path.read_text()[-4000:]}"
            return log_path.read_text().count("canceling statement due to statement timeout")

        async with admin.transaction():
            await admin.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            await wait_for(lambda: timeouts() >= 2, timeout=30, what="the idle writer's reads timing out")
            seen = timeouts()
            await services.bus.publish_many(during)
            await wait_for(lambda: timeouts() >= seen + 2, timeout=30, what="the writer's appends timing out")
        await wait_for(lambda: appended(services, during), timeout=30, what="the events once the lock lifted")

        # Its connections terminated (pool and lease), again and again while events arrive.
        after = run_events("TERMINATED", n=2, failed=0)
        for i, event in enumerate(after):
            await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await services.bus.publish_many([event])
            if i % 3 == 0:
                await asyncio.sleep(0.05)  # the fault's cadence: some kills land mid-append, some between
        await wait_for(lambda: appended(services, after), timeout=30, what="the events after the terminations")
        assert proc.returncode is None, log_path.read_text()[-4000:]

        every = [*first, *during, *after]
        counts = await admin.fetch(
            "SELECT dedup_key, count(*) AS n FROM events WHERE dedup_key = ANY($1::text[]) GROUP BY dedup_key",
            [e.dedup_key for e in every],
        )
        assert len(counts) == len({e.dedup_key for e in every})
        assert all(row["n"] == 1 for row in counts)
    finally:
        await admin.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0, log_path.read_text()[-4000:]
