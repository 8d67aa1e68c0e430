"""Checks a stage makes before paid work (oracle, judge): is the run over, is the outcome already stored?

One read of the log (the writer's), never a write: a stored dedup key means the event was already recorded.
The run is over once any of its terminal events is logged (the first in log order decides how it ended);
the log, not the read model, is asked: it is never behind it, and one query answers both questions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from echelon_platform.domain.events import RunCompleted, RunFailed
from echelon_platform.ports.log import LogQueries

log = structlog.get_logger(__name__)


class PaidWorkGuard:
    def __init__(self, log_queries: LogQueries) -> None:
        self.log_queries = log_queries
        self._waiting: list[tuple[list[str], asyncio.Future[set[str]]]] = []  # lookups for the next query
        self._asking: asyncio.Task[None] | None = None

    async def skip_reason(self, run_id: str, dedup_keys: Sequence[str]) -> str | None:
        """Why this work need not be done again, or None when it must be done."""
        ended = [f"{RunCompleted.TOPIC}:{run_id}", f"{RunFailed.TOPIC}:{run_id}"]
        stored = await self._stored([*ended, *dedup_keys])
        if stored.intersection(ended):
            return "run already ended"
        if stored:
            return f"already in the log: {', '.join(sorted(stored))}"
        return None

    async def _stored(self, keys: list[str]) -> set[str]:
        """Which of `keys` the log holds. The lookups made while a query is on its way go together in the next
        one: a hundred replays arriving at once make a few queries, not a hundred waiting for the pool."""
        answer: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, answer))
        if self._asking is None or self._asking.done():
            self._asking = asyncio.create_task(self._ask())
        return await answer

    async def _ask(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                stored = await self.log_queries.has_dedup_keys(list(dict.fromkeys(k for ks, _ in batch for k in ks)))
            except asyncio.CancelledError:
                for _, answer in batch:
                    answer.cancel()
                raise
            except Exception as exc:  # the log cannot say: each caller fails (and its message is retried)
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            for ks, answer in batch:
                if not answer.done():
                    answer.set_result(stored.intersection(ks))


def log_skip(stage: str, run_id: str, reason: str) -> None:
    log.info("stage.skip", stage=stage, run_id=run_id, reason=reason)
