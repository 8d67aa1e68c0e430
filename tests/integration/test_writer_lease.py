"""One writer per partition on real Postgres/NATS: standbys, fencing, gap-free tailing, SIGKILL takeover."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from coordinator.assembly import coordinator_for
from echelon_platform.adapters.event_store import _APPEND, append_arguments
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.writer_lease import WriterLease
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.errors import WriterFenced
from tests.factories import requested, run_events
from tests.helpers import stop_processes, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]


async def fetch(settings: Settings, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def waiting_on_the_lease_row(conn: asyncpg.Connection) -> bool:
    """Whether a statement touching the lease table waits for a lock."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%lease%'"
    return bool(await conn.fetchval(query))


async def lease_row(settings: Settings) -> asyncpg.Record | None:
    rows = await fetch(settings, "SELECT * FROM writer_lease WHERE partition = $1", settings.writer_partition)
    return rows[0] if rows else None


async def test_two_coordinators_one_consumes_the_other_stands_by(services: Services, settings: Settings) -> None:
    events = [requested(f"R{i:03d}") for i in range(500)]
    async with coordinator_for(services, settings) as first, coordinator_for(services, settings) as second:
        tasks = [asyncio.create_task(c.run()) for c in (first, second)]
        try:
            await wait_for(lambda: first.fence or second.fence, what="a leader")
            await services.bus.publish_many(events)
            await wait_for(lambda: first.stats.appended + second.stats.appended >= 500, what="all appended")
            assert {first.stats.appended, second.stats.appended} == {0, 500}
            assert (first.fence is None) != (second.fence is None)  # exactly one leader
        finally:
            first.stop()
            second.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 15)
    stored = await fetch(settings, "SELECT stream_seq FROM events ORDER BY seq")
    assert len(stored) == 500
    assert [r["stream_seq"] for r in stored] == sorted(r["stream_seq"] for r in stored)
    row = await lease_row(settings)
    assert row is not None and row["epoch"] == 1


async def test_a_superseded_leader_is_fenced(services: Services, settings: Settings) -> None:
    url = str(settings.database_url)
    async with (
        WriterLease(url, "p", ttl_s=1.0, poll_s=0.05) as a,
        WriterLease(url, "p", ttl_s=1.0, poll_s=0.05) as b,
    ):
        fence_a = await a.acquire()
        assert fence_a is not None and fence_a.epoch == 1
        taking_over = asyncio.create_task(b.acquire())
        await asyncio.sleep(0.2)  # b keeps polling while a is healthy and renewing
        assert not taking_over.done()
        # a's process "pauses": its dedicated session is gone (as an evicting standby would do it).
        admin = await asyncpg.connect(url)
        try:
            await admin.fetchval("SELECT pg_terminate_backend($1)", a.backend_pid)
        finally:
            await admin.close()
        fence_b = await asyncio.wait_for(taking_over, 5)
        assert fence_b is not None and fence_b.epoch == 2
        await wait_for(a.lost.is_set, what="a notices it lost the lease")

        with pytest.raises(WriterFenced):
            await services.store.append_batch([(requested("LATE"), 1)], fence=fence_a)
        assert await services.store.count() == 0
        result = await services.store.append_batch([(requested("NEW"), 2)], fence=fence_b)
        assert result.inserted == 1


async def test_an_append_waiting_behind_an_epoch_bump_inserts_nothing(services: Services, settings: Settings) -> None:
    """The append checks the epoch in its own statement: one that meets a new leader's bump in progress waits
    for it, then reads the new epoch and inserts nothing (and a bump waits for an append in progress)."""
    url = str(settings.database_url)
    async with WriterLease(url, "p", ttl_s=5.0) as a:
        fence_a = await a.acquire()
        assert fence_a is not None
        bump = await asyncpg.connect(url)
        try:
            tx = bump.transaction()
            await tx.start()
            await bump.execute("UPDATE writer_lease SET epoch = epoch + 1 WHERE partition = 'p'")
            late = asyncio.create_task(services.store.append_batch([(requested("LATE"), 1)], fence=fence_a))
            await wait_for(lambda: waiting_on_the_lease_row(bump), what="the append waiting for the bump's row lock")
            await tx.commit()
            with pytest.raises(WriterFenced, match="stale"):
                await late
        finally:
            await bump.close()
    assert await services.store.count() == 0


async def test_an_append_that_waited_for_another_with_the_same_events_names_their_winners(
    services: Services, settings: Settings
) -> None:
    """An append whose events another statement committed while it waited for the lease row (a retry racing
    the statement it retries) inserts nothing and still names the logged rows: its own snapshot is older than
    them (it used to return no winner at all, so the writer projected nothing and acked)."""
    url = str(settings.database_url)
    async with WriterLease(url, "p", ttl_s=5.0) as a:
        fence = await a.acquire()
        assert fence is not None
        events = [(requested("RACE"), 1)]
        first = await asyncpg.connect(url)
        try:
            tx = first.transaction()
            await tx.start()
            await fence.check(first)  # holds the lease row, as an append in progress does
            [inserted] = await first.fetch(_APPEND, *append_arguments(events, 0))
            retry = asyncio.create_task(services.store.append_batch(events, fence=fence))
            await wait_for(lambda: waiting_on_the_lease_row(first), what="the second append waiting for the lease row")
            await tx.commit()
            result = await retry
        finally:
            await first.close()
    assert result.inserted == 0
    assert result.winners == {inserted["event_id"]: inserted["seq"]}


async def test_a_hung_leader_that_stops_renewing_is_evicted(settings: Settings) -> None:
    url = str(settings.database_url)
    # a never renews (a frozen process keeps its session, hence its advisory lock).
    async with (
        WriterLease(url, "p", ttl_s=0.5, renew_s=3600) as a,
        WriterLease(url, "p", ttl_s=0.5, poll_s=0.05) as b,
    ):
        assert await a.acquire() is not None
        a_pid = a.backend_pid
        started = time.monotonic()
        fence_b = await asyncio.wait_for(b.acquire(), 5)
        assert fence_b is not None and fence_b.epoch == 2
        assert time.monotonic() - started >= 0.4  # not before the lease went stale
        alive = await fetch(settings, "SELECT 1 FROM pg_stat_activity WHERE pid = $1", a_pid)
        assert not alive


async def test_fenced_appends_become_visible_in_log_order(services: Services, settings: Settings) -> None:
    """A reader tailing `seq > last` must never find a lower seq committed after it passed a higher one."""
    async with WriterLease(str(settings.database_url), "p") as lease:
        fence = await lease.acquire()
        assert fence is not None
        writers, batches, size = 4, 12, 100
        done = asyncio.Event()
        violations: list[tuple[int, int]] = []

        async def writer(w: int) -> None:
            for b in range(batches):
                events = [(requested(f"W{w}B{b}E{i}"), (w * batches + b) * size + i) for i in range(size)]
                await services.store.append_batch(events, fence=fence)

        async def tail() -> int:
            conn = await asyncpg.connect(settings.database_url)
            seen: set[int] = set()
            passed = 0  # the highest seq read so far: a tailing reader's `last_seq`
            try:
                while not done.is_set() or len(seen) < writers * batches * size:
                    seqs = [r["seq"] for r in await conn.fetch("SELECT seq FROM events")]
                    violations.extend((s, passed) for s in seqs if s < passed and s not in seen)
                    seen.update(seqs)
                    passed = max(seqs, default=passed)
            finally:
                await conn.close()
            return len(seen)

        reader = asyncio.create_task(tail())
        await asyncio.gather(*(writer(w) for w in range(writers)))
        done.set()
        assert await asyncio.wait_for(reader, 20) == writers * batches * size
    assert not violations, f"rows became visible below the tail position: {violations[:5]}"


def _env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ECHELON_LOG_LEVEL": "INFO"}
    env.update(
        NATS_URL=str(settings.nats_url),
        DATABASE_URL=str(settings.database_url),
        REDIS_URL=str(settings.redis_url),
        ECHELON_STREAM_NAME=settings.stream_name,
        ECHELON_SUBJECT_ROOT=settings.subject_root,
        ECHELON_REDIS_PREFIX=settings.redis_prefix,
        ECHELON_CONSUMER_PREFIX=settings.consumer_prefix,
        ECHELON_DATA_DIR=str(settings.data_dir),
        ECHELON_FETCH_TIMEOUT_S="0.2",
    )
    return env


def _start_coordinator(settings: Settings, **extra_env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "from echelon.cli import main; main(['coordinator'])"],
        env=_env(settings) | extra_env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_sigkill_of_the_leader_hands_over_within_five_seconds(services: Services, settings: Settings) -> None:
    procs = [_start_coordinator(settings) for _ in range(2)]
    try:
        await wait_for(lambda: _contenders(settings, 2), timeout=60, what="both processes up (leader, standby)")
        first = await lease_row(settings)
        assert isinstance(first, asyncpg.Record)
        before = run_events("BEFORE", n=2, failed=0)
        await services.bus.publish_many(before)
        await wait_for(lambda: services.store.count(), what="events appended by the first leader")
        leader_pid = int(first["holder"].split(":")[1])
        leader = next(p for p in procs if p.pid == leader_pid)

        os.kill(leader.pid, signal.SIGKILL)
        killed_at = time.monotonic()

        async def new_epoch() -> bool:
            row = await lease_row(settings)
            return row is not None and row["epoch"] > first["epoch"]

        await wait_for(new_epoch, timeout=5, interval=0.05, what="the standby's epoch bump")
        took_over_s = time.monotonic() - killed_at
        after = run_events("AFTER", n=3, failed=0)
        await services.bus.publish_many(after)
        await wait_for(lambda: _appended(services, after), timeout=15, what="events published after the kill")
        second = await lease_row(settings)
        assert second is not None and int(second["holder"].split(":")[1]) != leader_pid
        assert took_over_s < 5
    finally:
        stop_processes(procs)
    # The survivor stopped on SIGTERM: a clean exit; the killed one reports the signal.
    assert sorted(p.returncode for p in procs) == [-signal.SIGKILL, 0]


async def _contenders(settings: Settings, n: int) -> bool:
    """Each coordinator keeps a lease connection open, whether leading or standing by."""
    rows = await fetch(
        settings,
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        f"echelon-writer:{settings.writer_partition}",
    )
    return len(rows) == n


async def _appended(services: Services, events: list[Envelope]) -> bool:
    ids = {e.event_id for e in events}
    stored = {e.event_id for e in await services.store.run_events("AFTER")}
    return ids <= stored
