"""A run that makes no progress is failed by the watchdog, with a reason; finished runs are left alone.
Progress is measured on the log, and nobody is judged while the writer is behind."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg

from coordinator.assembly import coordinator_for
from echelon.embedded._process import free_port
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import CertificateIssued, RunCompleted, RunFailed, RunIngesting, make_event
from pipeline_workers.pipeline import watchdog_for
from tests.factories import certificate, requested, run_events
from tests.helpers import certifier_keyring, wait_for


async def age(settings: Settings, *run_ids: str, hours: int = 1) -> None:
    """As if the runs' events had been logged `hours` ago (the writer's clock, which the watchdog reads)."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            "UPDATE events SET appended_at = appended_at - make_interval(hours => $2) "
            "WHERE correlation_id = ANY($1::text[])",
            [f"run-{r}" for r in run_ids],
            hours,
        )
    finally:
        await conn.close()


async def test_stalled_run_is_failed_and_finished_run_is_not(settings: Settings) -> None:
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        keyring = await certifier_keyring(services.store, settings)
        cert = certificate("DONE", keyring)
        for e in [
            requested("STALLED"),
            *run_events("DONE", n=2, failed=0),
            make_event(CertificateIssued(run_id="DONE", certificate=cert)),
            make_event(RunCompleted(run_id="DONE", certificate_id=cert.certificate_id)),
            # Certified, but its `run.completed` not logged yet: the certificate decides, no watchdog race.
            *run_events("CERTIFIED", n=2, failed=0),
            make_event(CertificateIssued(run_id="CERTIFIED", certificate=certificate("CERTIFIED", keyring))),
        ]:
            await services.bus.publish(e)
        await coordinator.run(until_idle=True)
        await age(settings, "STALLED", "DONE", "CERTIFIED")

        watchdog = watchdog_for(services, timeout_s=60, interval_s=1)
        assert await watchdog.sweep() == ["STALLED"]
        await coordinator.run(until_idle=True)

        state = await services.read_models.get_run("STALLED")
        assert state is not None and state.status.name == "FAILED"
        assert state.error is not None and "no progress for 60s while PENDING" in state.error
        done = await services.read_models.get_run("DONE")
        assert done is not None and done.status.name == "COMPLETED"
        assert await watchdog.sweep() == []  # a failed run is no longer going


async def test_nobody_is_judged_while_the_writer_is_behind(settings: Settings) -> None:
    """A writer stall longer than the timeout used to fail every active run (a lagging read model)."""
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        first = requested("WAITING")
        await services.bus.publish(first.model_copy(update={"timestamp": first.timestamp - timedelta(hours=1)}))
        await coordinator.run(until_idle=True)
        await age(settings, "WAITING")
        # The writer stops; the run's next event waits in the stream, unlogged.
        await services.bus.publish(run_events("WAITING", n=1, failed=0)[1])
        watchdog = watchdog_for(services, timeout_s=60, interval_s=1, writer_behind_s=0.5)

        async def writer_seen_behind() -> bool:
            return await services.bus.backlog_age_s(f"{settings.consumer_prefix}-coordinator") > 0.5

        await wait_for(writer_seen_behind, what="the backlog to age")
        assert await watchdog.sweep() == []
        await coordinator.run(until_idle=True)  # caught up: the run's progress is logged now
        assert await watchdog.sweep() == []


async def test_a_redis_outage_does_not_end_the_watchdog(settings: Settings) -> None:
    """Found by `echelon chaos`: a Redis error escaped the watchdog and ended every stage of the process."""
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        await services.bus.publish(requested("ORPHAN"))
        await coordinator.run(until_idle=True)
        await age(settings, "ORPHAN")
    dead_redis = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with Services(dead_redis, name="test") as services:
        watchdog = watchdog_for(services, timeout_s=60, interval_s=0.05)
        task = asyncio.create_task(watchdog.run())
        try:

            async def failure_published() -> bool:  # the request, then the watchdog's `run.failed`
                return int((await services.bus.js.stream_info(services.bus.stream)).state.messages) >= 2

            await wait_for(failure_published, what="the stalled run failed without Redis")
            assert not task.done()
        finally:
            watchdog.stop()
            await asyncio.wait_for(task, 5)


async def test_a_failure_decided_before_progress_in_the_writers_batch_is_refused(settings: Settings) -> None:
    """The watchdog's decision names the run's log position it saw. Progress published before the failure
    (waiting in the stream, ahead of it in the writer's batch) makes it stale: parked, the run goes on."""
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        for run_id in ("MOVING", "IDLE"):
            await services.bus.publish(requested(run_id))
        await coordinator.run(until_idle=True)
        await age(settings, "MOVING", "IDLE")
        await services.bus.publish(make_event(RunIngesting(run_id="MOVING", source="github")))  # not logged yet
        watchdog = watchdog_for(services, timeout_s=60, interval_s=1, writer_behind_s=3600)
        assert sorted(await watchdog.sweep()) == ["IDLE", "MOVING"]  # both look idle in the log
        await coordinator.run(until_idle=True)

        [parked] = await services.store.parked()
        assert "stale watchdog decision: run MOVING progressed after log position" in parked.reason
        moving = await services.read_models.get_run("MOVING")
        assert moving is not None and moving.status.name == "INGESTING"
        idle = await services.read_models.get_run("IDLE")
        assert idle is not None and idle.status.name == "FAILED"


async def test_a_failure_decided_before_progress_already_logged_is_refused(settings: Settings) -> None:
    """The other order: the progress is logged first, then a failure decided on the earlier position arrives
    (a stalled-runs query that returned late)."""
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        await services.bus.publish(requested("LATE"))
        await coordinator.run(until_idle=True)
        decided_at = (await services.store.last_positions(["LATE"]))["LATE"]
        await services.bus.publish(make_event(RunIngesting(run_id="LATE", source="github")))
        await coordinator.run(until_idle=True)
        stale = RunFailed(run_id="LATE", reason="no progress", stage="watchdog", as_of_seq=decided_at)
        await services.bus.publish(make_event(stale))
        await coordinator.run(until_idle=True)
        state = await services.read_models.get_run("LATE")
        assert state is not None and state.status.name == "INGESTING"
        [parked] = await services.store.parked()
        assert f"run LATE progressed after log position {decided_at}" in parked.reason

        # A decision on the run's current position stands.
        current = (await services.store.last_positions(["LATE"]))["LATE"]
        fresh = make_event(RunFailed(run_id="LATE", reason="no progress", stage="watchdog", as_of_seq=current))
        # (Another message id than the stale one's, as the watchdog gives each decision.)
        await services.bus.publish_raw(services.subjects.for_event(fresh), fresh.to_wire(), msg_id="fresh-decision")
        await coordinator.run(until_idle=True)
        state = await services.read_models.get_run("LATE")
        assert state is not None and state.status.name == "FAILED"
