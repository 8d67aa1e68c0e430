"""Read models heal themselves: after their loss (a Redis restart without persistence, a flush) or at
writer start, they are rebuilt or caught up from the log with no operator step, to the same content."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.assembly import coordinator_for
from coordinator.rebuild import verify
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import Keyring
from echelon_platform.config import Settings
from echelon_platform.domain.events import CertificateIssued, RunCompleted, make_event
from tests.factories import certificate, run_events
from tests.helpers import certifier_keyring, wait_for


async def lose_read_models(services: Services) -> int:
    """What a Redis restart without persistence does to our keys (scoped to this test's prefix)."""
    redis = services.read_models.redis
    keys = [k async for k in redis.scan_iter(match=f"{services.read_models.prefix}*", count=1000)]
    return int(await redis.delete(*keys)) if keys else 0


@pytest.fixture
async def keyring(services: Services, settings: Settings) -> Keyring:
    return await certifier_keyring(services.store, settings)


def completed_run(run_id: str, keyring: Keyring) -> list:  # type: ignore[type-arg]
    cert = certificate(run_id, keyring)
    return [
        *run_events(run_id, n=2, failed=0),
        make_event(CertificateIssued(run_id=run_id, certificate=cert)),
        make_event(RunCompleted(run_id=run_id, certificate_id=cert.certificate_id)),
    ]


async def status_of(services: Services, run_id: str) -> str | None:
    state = await services.read_models.get_run(run_id)
    return state.status.name if state is not None else None


async def test_a_running_writer_rebuilds_lost_read_models_without_any_new_event(
    services: Services, settings: Settings, keyring: Keyring
) -> None:
    for e in [*completed_run("HEALA", keyring), *run_events("HEALB", n=3, failed=1)]:
        await services.bus.publish(e)
    async with coordinator_for(services, settings) as coordinator:
        task = asyncio.create_task(coordinator.run())
        try:
            await wait_for(lambda: _is(services, "HEALA", "COMPLETED"), what="run projected")
            assert await lose_read_models(services) > 0
            assert await status_of(services, "HEALA") is None
            # No event arrives; the idle writer notices the missing checkpoint and rebuilds.
            await wait_for(lambda: _is(services, "HEALA", "COMPLETED"), timeout=15, what="read models rebuilt")
            cert_id = certificate("HEALA").certificate_id
            assert (await services.read_models.get_certificate(cert_id)) is not None
            runs, total = await services.read_models.list_runs(user_id="alice")
            assert total == 2 and {r.run_id for r in runs} == {"HEALA", "HEALB"}
        finally:
            coordinator.stop()
            await asyncio.wait_for(task, 10)
    async with Projector(str(settings.redis_url), settings.redis_prefix) as projector:
        report = await verify(services.store, projector, services.settings)
    assert report.differences == []


async def test_a_certify_trigger_lost_with_the_read_models_is_announced_again(
    services: Services, settings: Settings
) -> None:
    """Every replay scored and committed, then the writer died before projecting and announcing, and the
    read models vanished: the restarted writer rebuilds and still tells the certifier."""
    events = run_events("HEALC", n=2, failed=0)
    await services.store.append_batch([(e, i) for i, e in enumerate(events, start=1)])
    await lose_read_models(services)
    async with coordinator_for(services, settings) as coordinator:
        await coordinator.run(until_idle=True)
        await coordinator.run(until_idle=True)  # the announcement it published is appended too
    topics = await services.store.pool.fetch(
        "SELECT topic FROM events WHERE correlation_id = 'run-HEALC' AND topic = 'verify.run.certifying'"
    )
    assert len(topics) == 1
    assert await status_of(services, "HEALC") == "CERTIFYING"


async def test_a_restarted_writer_catches_up_from_its_checkpoint(
    services: Services, settings: Settings, keyring: Keyring
) -> None:
    """Events logged but never projected (a crash between commit and projection) are applied at start."""
    for e in completed_run("HEALD", keyring):
        await services.bus.publish(e)
    async with coordinator_for(services, settings) as coordinator:
        await coordinator.run(until_idle=True)
    # Roll the checkpoint back as if the last batches had been committed but not projected.
    async with Projector(str(settings.redis_url), settings.redis_prefix) as projector:
        checkpoint = await projector.checkpoint()
        assert checkpoint is not None and checkpoint.seq > 0
        ns = checkpoint.namespace
        await projector.redis.set(f"{settings.redis_prefix}checkpoint", f"{checkpoint.generation}:0:{ns}")
        await projector.redis.delete(f"{settings.redis_prefix}{ns}:run:HEALD")
    async with coordinator_for(services, settings) as coordinator:
        await coordinator.run(until_idle=True)
    assert await status_of(services, "HEALD") == "COMPLETED"


async def _is(services: Services, run_id: str, status: str) -> bool:
    return await status_of(services, run_id) == status


async def test_a_new_writer_takes_the_projector_lock_of_a_dead_older_one_at_once(
    services: Services, settings: Settings, keyring: Keyring
) -> None:
    """A writer killed between taking the projector lock and releasing it leaves the lock behind; its
    successor (a newer epoch) takes it over instead of waiting for it to expire."""
    events = completed_run("HEALE", keyring)
    await services.bus.publish(events[0])
    async with coordinator_for(services, settings) as first:
        await first.run(until_idle=True)
    assert first.projector.epoch == 1
    # It died holding the lock (its token: partition 0, epoch 1), with the rest of the run still to come.
    lock = f"{settings.redis_prefix}lock:projector"
    await services.read_models.redis.set(lock, "0:1:01JDEADWRITER0000000000000", px=120_000)
    for e in events[1:]:
        await services.bus.publish(e)
    async with coordinator_for(services, settings) as second:
        await asyncio.wait_for(second.run(until_idle=True), 30)  # far less than the stale lock's life
    assert second.projector.epoch == 2
    assert await status_of(services, "HEALE") == "COMPLETED"


async def test_a_replay_holding_the_projector_lock_is_waited_for(
    services: Services, settings: Settings, keyring: Keyring
) -> None:
    """A lock held by a replay's switch (no epoch) is never taken over: the writer appends, then waits."""
    lock = f"{settings.redis_prefix}lock:projector"
    async with coordinator_for(services, settings) as coordinator:
        task = asyncio.create_task(coordinator.run())
        try:
            events = completed_run("HEALF", keyring)
            await services.bus.publish(events[0])
            await wait_for(lambda: _is(services, "HEALF", "PENDING"), what="the writer projecting")
            await services.read_models.redis.set(lock, "0:-:01JREPLAYSWITCH000000000000", px=120_000)
            for e in events[1:]:
                await services.bus.publish(e)
            await wait_for(lambda: _count_over(services, 1), what="events appended while projection waits")
            assert await status_of(services, "HEALF") == "PENDING"
            await services.read_models.redis.delete(lock)
            await wait_for(lambda: _is(services, "HEALF", "COMPLETED"), timeout=15, what="projected after release")
        finally:
            coordinator.stop()
            await asyncio.wait_for(task, 10)


async def _count_over(services: Services, n: int) -> bool:
    return await services.store.count() > n
