"""The watchdog: a run that makes no progress within the configured time is failed, with a reason.

Progress is measured on the log (when the writer last appended an event of the run), never on a read
model that may lag; and while the writer itself is behind, nobody is judged. It publishes
`verify.run.failed`; whether that ends the run is the lifecycle's rule in log order, so it cannot undo a
certificate already logged. Together with the stages' dead-lettering this makes every run end.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import structlog

from echelon_platform.adapters.services import Services
from echelon_platform.domain.envelope import utcnow
from echelon_platform.domain.events import RunFailed, make_event
from echelon_platform.retry import sleep_unless

log = structlog.get_logger(__name__)

# A writer whose oldest unacked event waits longer than this is behind: runs look idle only because
# their events are not logged yet.
WRITER_BEHIND_S = 10.0


class Watchdog:
    def __init__(
        self, services: Services, *, timeout_s: float, interval_s: float, writer_behind_s: float = WRITER_BEHIND_S
    ) -> None:
        self.services = services
        self.writer_behind_s = writer_behind_s
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def sweep(self) -> list[str]:
        """Fail every stalled run once; returns their ids."""
        settings = self.services.settings
        # The oldest event any partition's writer has not logged yet.
        behind = max(
            [await self.services.bus.backlog_age_s(settings.writer_durable(k)) for k in settings.partitioning.indices]
        )
        if behind > self.writer_behind_s:
            log.warning("watchdog.writer_behind", oldest_unlogged_s=round(behind, 1))
            return []
        failed: list[str] = []
        for run_id, last in await self.services.store.stalled_runs(self.timeout_s):
            reason = await self._reason(run_id, last)
            await self.services.bus.publish(make_event(RunFailed(run_id=run_id, reason=reason, stage="watchdog")))
            log.warning("watchdog.failed_run", run_id=run_id, reason=reason)
            failed.append(run_id)
        return failed

    async def _reason(self, run_id: str, last: datetime) -> str:
        idle = (utcnow() - last).total_seconds()
        where = ""
        try:
            state = await self.services.read_models.get_run(run_id)  # only to say where it stopped
        except Exception:
            state = None
        if state is not None:
            done = f"{state.progress}/{state.total if state.total is not None else '?'}"
            where = f" while {state.status.name} ({done} replays done)"
        return f"no progress for {self.timeout_s:.0f}s{where}; last event logged {idle:.0f}s ago"

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("watchdog.sweep_failed", error=str(exc) or type(exc).__name__)
            await sleep_unless(self._stopping, self.interval_s)
