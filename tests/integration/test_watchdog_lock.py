"""The watchdog never fails a healthy run because a table lock held the log still.

The reproduction: another connection holds `LOCK TABLE events IN ACCESS EXCLUSIVE MODE` for longer than the
run timeout. The runs were slow just before (an oracle taking its time) and progress during the lock: their
events wait in the stream while the writer's append waits on the lock. A sweep starts while the writer is
not yet "behind"; its stalled-runs query waits on the lock too, and returns when the lock lifts, before the
writer has committed its backlog: every run looks idle for longer than the timeout.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from coordinator.assembly import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import ReplayRequested, make_event
from pipeline_workers.pipeline import watchdog_for
from pipeline_workers.watchdog import Watchdog
from tests.factories import record, requested
from tests.helpers import wait_for

RUNS = [f"HEALTHY{i}" for i in range(12)]
TIMEOUT_S = 3.0  # the run timeout: shorter than the lock
LOCK_S = 7.0
PROGRESS_AT_S = 1.5  # into the lock, each run makes progress (its event waits in the stream)
WRITER_BEHIND_S = 3.0  # the sweep below starts with the backlog younger than this


async def waiting_on_events(conn: asyncpg.Connection) -> int:
    """Sessions waiting on a lock on `events`. (pg_stat_activity cannot say whose: a cached prepared
    statement waits on its lock before its text is reported.)"""
    query = "SELECT count(DISTINCT pid) FROM pg_locks WHERE relation = 'events'::regclass AND NOT granted"
    return int(await conn.fetchval(query))


class FencedOnly(Watchdog):
    """The watchdog without its second look at the writer after the query: only the writer's fence on
    the decision's log position stands between a stale decision and a healthy run."""

    async def _writer_behind(self, when: str) -> bool:
        return False if when == "after the query" else await super()._writer_behind(when)


@pytest.mark.parametrize("kind", [Watchdog, FencedOnly])
async def test_a_table_lock_longer_than_the_run_timeout_fails_no_healthy_run(
    settings: Settings, kind: type[Watchdog]
) -> None:
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        writer = asyncio.create_task(coordinator.run())
        watchdog = watchdog_for(services, timeout_s=TIMEOUT_S, interval_s=1, writer_behind_s=WRITER_BEHIND_S, kind=kind)
        locker = await asyncpg.connect(settings.database_url)
        try:
            await services.bus.publish_many([requested(r) for r in RUNS])

            async def all_logged() -> bool:
                query = "SELECT count(*) FROM events WHERE topic = 'verify.run.requested'"
                return int(await services.store.pool.fetchval(query)) == len(RUNS)

            await wait_for(all_logged, what="every run logged")
            assert await watchdog.sweep() == []  # nobody is idle yet

            async with locker.transaction():
                await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                locked_at = time.monotonic()  # every run's last logged event is older than this

                def since_lock(seconds: float) -> bool:
                    return time.monotonic() - locked_at >= seconds

                await wait_for(lambda: since_lock(PROGRESS_AT_S), interval=0.05, what="the runs' next step")
                progress = [
                    make_event(ReplayRequested(run_id=r, replay_id=f"{r}-0000", index=0, record=record(0)))
                    for r in RUNS
                ]
                await services.bus.publish_many(progress)
                await wait_for(lambda: waiting_on_events(locker), what="the writer's append to wait on the lock")
                # Past the run timeout in the log's eyes, with the writer's backlog still young: judged.
                await wait_for(lambda: since_lock(TIMEOUT_S + 0.1), interval=0.05, what="the run timeout")
                sweep = asyncio.create_task(watchdog.sweep())

                async def sweep_blocked() -> bool:
                    return await waiting_on_events(locker) >= 2  # the writer's append and the sweep's query

                await wait_for(sweep_blocked, timeout=10, what="the watchdog's query to wait on the lock")
                await wait_for(lambda: since_lock(LOCK_S), timeout=LOCK_S + 5, interval=0.1, what="the lock's end")
            judged = await asyncio.wait_for(sweep, 30)

            async def logged_everything() -> bool:
                return await services.bus.backlog_age_s(settings.writer_durable(0)) == 0.0

            await wait_for(logged_everything, timeout=30, what="the writer to log the backlog and any failure")
        finally:
            await locker.close()
            coordinator.stop()
            await asyncio.wait_for(writer, 15)

        failed = await services.store.pool.fetch(
            "SELECT correlation_id, payload->>'reason' AS reason FROM events WHERE topic = 'verify.run.failed'"
        )
        assert [(r["correlation_id"], r["reason"]) for r in failed] == [], f"the sweep judged {judged}"
        for run_id in RUNS:
            state = await services.read_models.get_run(run_id)
            assert state is not None and state.status.name == "INVOKING", (run_id, state)
        # Whatever the sweep judged on its stale read was refused by the writer, with the reason.
        stale = [p.reason for p in await services.store.parked() if "stale watchdog decision" in p.reason]
        assert len(stale) == len(judged)
