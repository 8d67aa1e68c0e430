"""The writer's effects retried until they succeed (the batch stays un-acked meanwhile), and a stall said."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from echelon_platform.adapters.outages import is_transient, refused_value
from echelon_platform.errors import InfrastructureError, ReadModelsStale
from echelon_platform.metrics import Metrics
from echelon_platform.retry import retry_forever

log = structlog.get_logger(__name__)
T = TypeVar("T")

STALL_S = 5.0


class Retrying:
    """`await retrying("append", op)`: run `op` until it succeeds, retrying infrastructure failures."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        watch = asyncio.create_task(self._watch_stall(what))
        try:
            return await retry_forever(f"coordinator.{what}", op, transient)
        finally:
            watch.cancel()

    async def _watch_stall(self, what: str) -> None:
        """Say so while a step hangs (a table lock, a server that does not answer): a stall is never silent."""
        started = time.monotonic()
        while True:
            await asyncio.sleep(STALL_S)
            self.metrics.writer_stalls.labels(what).inc()
            log.warning("coordinator.stalled", step=what, seconds=round(time.monotonic() - started, 1))


def transient(exc: BaseException) -> bool:
    """An infrastructure failure worth retrying; a value Postgres refuses, or lost read models, are not."""
    if refused_value(exc):
        return False
    if isinstance(exc, ReadModelsStale):
        return False
    return isinstance(exc, InfrastructureError) or is_transient(exc)
