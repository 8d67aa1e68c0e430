"""A run that makes no progress is failed by the watchdog, with a reason; finished runs are left alone."""

from __future__ import annotations

from datetime import timedelta

from coordinator.factory import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import RunCompleted, make_event
from pipeline_workers.watchdog import Watchdog
from tests.factories import requested, run_events


async def test_stalled_run_is_failed_and_finished_run_is_not(settings: Settings) -> None:
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        stalled = requested("STALLED")
        # Old enough to count as stalled: created (and last updated) an hour ago.
        stalled = stalled.model_copy(update={"timestamp": stalled.timestamp - timedelta(hours=1)})
        await services.bus.publish(stalled)
        for e in [*run_events("DONE", n=1, failed=0), make_event(RunCompleted(run_id="DONE", certificate_id="c"))]:
            await services.bus.publish(e.model_copy(update={"timestamp": e.timestamp - timedelta(hours=1)}))
        await coordinator.run(until_idle=True)

        watchdog = Watchdog(services, timeout_s=60, interval_s=1)
        assert await watchdog.sweep() == ["STALLED"]
        await coordinator.run(until_idle=True)

        state = await services.read_models.get_run("STALLED")
        assert state is not None and state.status.name == "FAILED"
        assert state.error is not None and "no progress for 60s while PENDING" in state.error
        done = await services.read_models.get_run("DONE")
        assert done is not None and done.status.name == "COMPLETED"
        assert await watchdog.sweep() == []  # terminal runs leave the active index
