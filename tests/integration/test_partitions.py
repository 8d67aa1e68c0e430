"""A partitioned log on real NATS/Postgres/Redis: one fenced writer per partition, global read models that
stay correct, healing and repair per partition, and events published on the wrong partition parked."""

from __future__ import annotations

import asyncio
import os
import signal

import asyncpg
import pytest

from coordinator.assembly import coordinator_for, coordinators_for
from coordinator.rebuild import repair_partition, verify
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import Keyring
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import CertificateIssued, RunCompleted, make_event
from tests.factories import certificate, requested, run_events
from tests.helpers import certifier_keyring, stop_processes, wait_for
from tests.integration.test_writer_lease import _start_coordinator

RUNS = [f"PART{i:02d}" for i in range(10)]


@pytest.fixture
def psettings(settings: Settings) -> Settings:
    return settings.model_copy(update={"partitions": 2})


@pytest.fixture
def service_settings(psettings: Settings) -> Settings:
    return psettings


@pytest.fixture
async def keyring(services: Services, psettings: Settings) -> Keyring:
    return await certifier_keyring(services.store, psettings)


def completed_run(run_id: str, keyring: Keyring) -> list[Envelope]:
    cert = certificate(run_id, keyring)
    return [
        *run_events(run_id, n=2, failed=0),
        make_event(CertificateIssued(run_id=run_id, certificate=cert)),
        make_event(RunCompleted(run_id=run_id, certificate_id=cert.certificate_id)),
    ]


def projector(settings: Settings) -> Projector:
    return Projector(str(settings.redis_url), settings.redis_prefix, partitioning=settings.partitioning)


async def publish_runs(services: Services, keyring: Keyring) -> None:
    await services.bus.publish_many([e for run in RUNS for e in completed_run(run, keyring)])


async def drain_both(services: Services, settings: Settings) -> None:
    """Two writers, as two processes would run them: each holds only its own partition's lease."""
    async with coordinator_for(services, settings, 0) as first, coordinator_for(services, settings, 1) as second:
        await asyncio.gather(first.run(until_idle=True), second.run(until_idle=True))


async def status_of(services: Services, run_id: str) -> str | None:
    state = await services.read_models.get_run(run_id)
    return state.status.name if state is not None else None


async def test_each_partition_has_its_own_writer_and_listings_stay_global(
    services: Services, psettings: Settings, keyring: Keyring
) -> None:
    parts = psettings.partitioning
    assert {parts.of_run(r) for r in RUNS} == {0, 1}
    await publish_runs(services, keyring)
    async with coordinator_for(services, psettings, 0) as first, coordinator_for(services, psettings, 1) as second:
        await asyncio.gather(first.run(until_idle=True), second.run(until_idle=True))
    rows = await services.store.pool.fetch("SELECT correlation_id, partition, seq FROM events ORDER BY seq")
    assert len(rows) == sum(len(completed_run(r, keyring)) for r in RUNS)
    # Every event sits in its run's partition, appended by that partition's writer only.
    assert all(r["partition"] == parts.of_run(r["correlation_id"].removeprefix("run-")) for r in rows)
    assert first.stats.appended == sum(1 for r in rows if r["partition"] == 0) > 0
    assert second.stats.appended == sum(1 for r in rows if r["partition"] == 1) > 0
    leases = await services.store.pool.fetch("SELECT partition, epoch FROM writer_lease ORDER BY partition")
    assert [r["partition"] for r in leases] == [f"{psettings.writer_partition}-0", f"{psettings.writer_partition}-1"]
    listed, total = await services.read_models.list_runs(user_id="alice", limit=50)
    assert total == len(RUNS) and {r.run_id for r in listed} == set(RUNS)
    assert {await status_of(services, r) for r in RUNS} == {"COMPLETED"}
    async with projector(psettings) as proj:
        checkpoints = [await proj.redis.get(key) for key in proj.checkpoint_keys().values()]
        assert all(checkpoints)
        report = await verify(services.store, proj, services.settings)
    assert report.differences == [] and report.runs == len(RUNS)


async def test_an_event_published_on_another_partition_is_parked(services: Services, psettings: Settings) -> None:
    parts = psettings.partitioning
    stray = requested("PARTX")
    wrong = 1 - parts.of_run("PARTX")
    subject = f"{psettings.subject_root}.run.requested.{wrong}.PARTX"
    await services.bus.publish_raw(subject, stray.to_wire(), msg_id=stray.dedup_key)
    await services.bus.publish(requested("PARTY"))
    await drain_both(services, psettings)
    parked = await services.store.parked()
    assert [p.subject for p in parked] == [subject]
    assert f"belongs to partition {1 - wrong}" in parked[0].reason
    logged = await services.store.pool.fetch("SELECT DISTINCT correlation_id FROM events")
    assert {r["correlation_id"] for r in logged} == {"run-PARTY"}


async def test_lost_read_models_heal_with_every_partition_running(
    services: Services, psettings: Settings, keyring: Keyring
) -> None:
    await publish_runs(services, keyring)
    async with coordinators_for(services, psettings) as writers:
        assert [w.partition for w in writers.members] == [0, 1]
        task = asyncio.create_task(writers.run())
        try:
            await wait_for(lambda: _all_completed(services), timeout=30, what="every run projected")
            redis = services.read_models.redis
            keys = [k async for k in redis.scan_iter(match=f"{psettings.redis_prefix}*", count=1000)]
            await redis.delete(*keys)
            assert await status_of(services, RUNS[0]) is None
            await wait_for(lambda: _all_completed(services), timeout=30, what="read models rebuilt")
        finally:
            writers.stop()
            await asyncio.wait_for(task, 15)
    async with projector(psettings) as proj:
        report = await verify(services.store, proj, services.settings)
    assert report.differences == []


async def test_one_partition_is_repaired_while_the_other_is_left_alone(
    services: Services, psettings: Settings, keyring: Keyring
) -> None:
    parts = psettings.partitioning
    await publish_runs(services, keyring)
    await drain_both(services, psettings)
    zero = next(r for r in RUNS if parts.of_run(r) == 0)
    one = next(r for r in RUNS if parts.of_run(r) == 1)
    ns = await services.read_models.namespace()
    redis = services.read_models.redis
    await redis.delete(f"{psettings.redis_prefix}{ns}:run:{zero}", f"{psettings.redis_prefix}{ns}:run:{one}")
    async with projector(psettings) as proj:
        report = await repair_partition(services.store, proj, 1, services.settings)
        assert report.runs == sum(1 for r in RUNS if parts.of_run(r) == 1)
        assert await status_of(services, one) == "COMPLETED"
        assert await status_of(services, zero) is None  # partition 0 was not touched
        await repair_partition(services.store, proj, 0, services.settings)
        assert (await verify(services.store, proj, services.settings)).differences == []


async def _all_completed(services: Services) -> bool:
    return {await status_of(services, r) for r in RUNS} == {"COMPLETED"}


async def test_sigkill_of_one_partitions_writer_hands_that_partition_over(
    services: Services, psettings: Settings, keyring: Keyring
) -> None:
    """Two writer processes stand for both partitions: each partition has exactly one holder. Killing the
    holder of partition 1 moves only that partition (the survivor takes it); nothing acknowledged is lost."""
    procs = [_start_coordinator(psettings, ECHELON_PARTITIONS="2", ECHELON_WRITER_PARTITIONS="") for _ in range(2)]
    try:

        async def holders() -> dict[str, asyncpg.Record] | None:
            rows = await services.store.pool.fetch("SELECT * FROM writer_lease")
            return {r["partition"]: r for r in rows} if len(rows) == 2 else None

        await wait_for(holders, timeout=60, what="a writer for each partition")
        # Both processes up: partition 1 has its leader and a standby (each keeps a lease connection).
        await wait_for(lambda: _contenders(services, psettings.lease_name(1), 2), timeout=60, what="a standby")
        first = await holders()
        assert first is not None
        before = [e for run in RUNS[:4] for e in completed_run(run, keyring)]
        await services.bus.publish_many(before)
        await wait_for(lambda: _logged(services, len(before)), timeout=30, what="events before the kill")
        victim_pid = int(first[f"{psettings.writer_partition}-1"]["holder"].split(":")[1])
        os.kill(victim_pid, signal.SIGKILL)

        async def moved() -> bool:
            rows = await holders()
            return (
                rows is not None
                and rows[f"{psettings.writer_partition}-1"]["epoch"] > first[f"{psettings.writer_partition}-1"]["epoch"]
            )

        await wait_for(moved, timeout=10, interval=0.05, what="partition 1 taken over")
        after = [e for run in RUNS[4:] for e in completed_run(run, keyring)]
        await services.bus.publish_many(after)
        await wait_for(lambda: _logged(services, len(before) + len(after)), timeout=30, what="events after the kill")
        now = await holders()
        assert now is not None
        survivor = {int(r["holder"].split(":")[1]) for r in now.values()}
        assert survivor == {p.pid for p in procs} - {victim_pid}
        rows = await services.store.pool.fetch("SELECT correlation_id, partition FROM events")
        parts = psettings.partitioning
        assert all(r["partition"] == parts.of_run(r["correlation_id"].removeprefix("run-")) for r in rows)
        # While the survivor runs: logged is not yet projected (it projects, then acks), and a writer stopped
        # in between leaves the rest to the next one, so the read models are checked before the stop.
        await wait_for(lambda: _all_completed(services), timeout=30, what="read models of every run")
    finally:
        stop_processes(procs)
    assert await _all_completed(services)


async def _contenders(services: Services, lease: str, n: int) -> bool:
    count = await services.store.pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        f"echelon-writer:{lease}",
    )
    return int(count) >= n


async def _logged(services: Services, n: int) -> bool:
    """At least `n` run events logged (the writers' own certifying announcements come on top)."""
    count = await services.store.pool.fetchval("SELECT count(*) FROM events WHERE topic <> 'verify.run.certifying'")
    return int(count) >= n
