"""The watchdog: a run that makes no progress within the configured time is failed, with a reason.

It reads the run read models (never writes them) and publishes `verify.run.failed`; the coordinator does
the rest. Together with the stages' dead-lettering this makes every run end COMPLETED or FAILED.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from echelon_platform.adapters.services import Services
from echelon_platform.domain.envelope import utcnow
from echelon_platform.domain.events import RunFailed, make_event
from echelon_platform.errors import InfrastructureError
from echelon_platform.retry import sleep_unless

log = structlog.get_logger(__name__)


class Watchdog:
    def __init__(self, services: Services, *, timeout_s: float, interval_s: float) -> None:
        self.services = services
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def sweep(self) -> list[str]:
        """Fail every stalled run once; returns their ids."""
        cutoff = utcnow() - timedelta(seconds=self.timeout_s)
        stalled = await self.services.read_models.active_runs(cutoff.timestamp() * 1000)
        failed: list[str] = []
        for state in stalled:
            if state.status.terminal or not state.visible:
                continue
            reason = (
                f"no progress for {self.timeout_s:.0f}s while {state.status.name} "
                f"({state.progress}/{state.total if state.total is not None else '?'} replays done)"
            )
            await self.services.bus.publish(make_event(RunFailed(run_id=state.run_id, reason=reason, stage="watchdog")))
            log.warning("watchdog.failed_run", run_id=state.run_id, reason=reason)
            failed.append(state.run_id)
        return failed

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except InfrastructureError as exc:
                log.warning("watchdog.sweep_failed", error=str(exc))
            await sleep_unless(self._stopping, self.interval_s)
