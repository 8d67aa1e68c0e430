"""Checks a stage makes before paid work (oracle, judge): is the run over, is the outcome already stored?

One read of the log (the writer's), never a write: a stored dedup key means the event was already recorded.
The run is over once any of its terminal events is logged (the first in log order decides how it ended);
the log, not the read model, is asked: it is never behind it, and one query answers both questions.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from echelon_platform.domain.events import RunCompleted, RunFailed
from echelon_platform.ports.log import LogQueries

log = structlog.get_logger(__name__)


class PaidWorkGuard:
    def __init__(self, log_queries: LogQueries) -> None:
        self.log_queries = log_queries

    async def skip_reason(self, run_id: str, dedup_keys: Sequence[str]) -> str | None:
        """Why this work need not be done again, or None when it must be done."""
        ended = [f"{RunCompleted.TOPIC}:{run_id}", f"{RunFailed.TOPIC}:{run_id}"]
        stored = await self.log_queries.has_dedup_keys([*ended, *dedup_keys])
        if stored.intersection(ended):
            return "run already ended"
        if stored:
            return f"already in the log: {', '.join(sorted(stored))}"
        return None


def log_skip(stage: str, run_id: str, reason: str) -> None:
    log.info("stage.skip", stage=stage, run_id=run_id, reason=reason)
