"""The watchdog: a run that makes no progress within the configured time is failed, with a reason.

Progress is measured on the log (when the writer last appended an event of the run), never on a read
model that may lag; and while the writer itself is behind (before or after the query), nobody is judged. It
publishes `verify.run.failed` with the log position it decided at; the writer refuses (parks) it when the
run has events logged after that position, so a decision overtaken by the run's progress (a query that
waited on a table lock, then read the log before the writer committed its backlog) never fails a healthy
run. Whether a failure ends the run is the lifecycle's rule in log order, so it cannot undo a certificate
already logged. Together with the stages' dead-lettering this makes every run end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

import structlog

from echelon_platform.domain.envelope import utcnow
from echelon_platform.domain.events import RunFailed, Subjects, make_event
from echelon_platform.ports.bus import RawPublisher, WriterBacklog
from echelon_platform.ports.log import LogQueries
from echelon_platform.ports.runs import RunStates
from echelon_platform.retry import sleep_unless

log = structlog.get_logger(__name__)

# A writer whose oldest unacked event waits longer than this is behind: runs look idle only because
# their events are not logged yet.
WRITER_BEHIND_S = 10.0


class Watchdog:
    def __init__(
        self,
        *,
        log_queries: LogQueries,
        runs: RunStates,
        publisher: RawPublisher,
        backlog: WriterBacklog,
        subjects: Subjects,
        writer_durables: Sequence[str],
        timeout_s: float,
        interval_s: float,
        writer_behind_s: float = WRITER_BEHIND_S,
    ) -> None:
        """`writer_durables`: every partition's writer consumer (while one is behind, nobody is judged)."""
        self.log_queries = log_queries
        self.runs = runs
        self.publisher = publisher
        self.backlog = backlog
        self.subjects = subjects
        self.writer_durables = list(writer_durables)
        self.writer_behind_s = writer_behind_s
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def sweep(self) -> list[str]:
        """Fail every stalled run once; returns their ids."""
        if await self._writer_behind("before the query"):
            return []
        stalled = await self.log_queries.stalled_runs(self.timeout_s)
        # The query may have waited (a table lock) while the writer's backlog grew, and return before the
        # writer commits it: judge only if the writer is level *after* the query too. That still leaves a
        # race (the writer commits and acks between the two), so each failure is also fenced on the run's
        # last log position: the writer refuses it if the run has events logged after that position.
        if not stalled or await self._writer_behind("after the query"):
            return []
        failed: list[str] = []
        for run in stalled:
            reason = await self._reason(run.run_id, run.last_appended)
            event = make_event(RunFailed(run_id=run.run_id, reason=reason, stage="watchdog", as_of_seq=run.last_seq))
            # One message id per decision (the run and its position): a decision the writer refused as stale
            # must not hide a later one, or a stage's failure, inside JetStream's duplicate window.
            await self.publisher.publish_raw(
                self.subjects.for_event(event), event.to_wire(), msg_id=f"{event.dedup_key}@{run.last_seq}"
            )
            log.warning("watchdog.failed_run", run_id=run.run_id, reason=reason, as_of_seq=run.last_seq)
            failed.append(run.run_id)
        return failed

    async def _writer_behind(self, when: str) -> bool:
        """Is any partition's writer behind: its oldest unlogged event older than `writer_behind_s`?"""
        behind = max([await self.backlog.backlog_age_s(durable) for durable in self.writer_durables], default=0.0)
        if behind > self.writer_behind_s:
            log.warning("watchdog.writer_behind", oldest_unlogged_s=round(behind, 1), seen=when)
            return True
        return False

    async def _reason(self, run_id: str, last: datetime) -> str:
        idle = (utcnow() - last).total_seconds()
        where = ""
        try:
            state = await self.runs.get_run(run_id)  # only to say where it stopped
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
