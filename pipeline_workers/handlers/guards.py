"""Checks a stage makes before paid work (oracle, judge): is the run over, is the outcome already stored?

Both are reads, never writes: the run read model (it may lag; then we only do a little extra work) and the
log (the writer's; a stored dedup key means the outcome was already recorded).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from echelon_platform.ports.log import LogQueries
from echelon_platform.ports.runs import RunStates

log = structlog.get_logger(__name__)


class PaidWorkGuard:
    def __init__(self, runs: RunStates, log_queries: LogQueries) -> None:
        self.runs = runs
        self.log_queries = log_queries

    async def run_is_over(self, run_id: str) -> bool:
        state = await self.runs.get_run(run_id)
        return state is not None and state.status.terminal

    async def skip_reason(self, run_id: str, dedup_keys: Sequence[str]) -> str | None:
        """Why this work need not be done again, or None when it must be done."""
        if await self.run_is_over(run_id):
            return "run already ended"
        stored = await self.log_queries.has_dedup_keys(dedup_keys)
        if stored:
            return f"already in the log: {', '.join(sorted(stored))}"
        return None


def log_skip(stage: str, run_id: str, reason: str) -> None:
    log.info("stage.skip", stage=stage, run_id=run_id, reason=reason)
