"""The one backoff policy of the product, and the waits the long-running loops share.

Equal jitter: the n-th retry waits between half and all of `min(cap, base * 2**(n-1))`, so concurrent
retries spread out but every one still backs off. Coordinator effects retry through tenacity with this
wait; reconnect loops use `Backoff`; stage workers put a failed or waiting message back after
`backoff_delay`; the GitHub and Anthropic adapters call `backoff_delay` directly so their tests can inject
the sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never
from tenacity.wait import wait_base

T = TypeVar("T")
log = structlog.get_logger(__name__)
_RNG = random.Random()  # jitter needs no reproducibility; tests pass their own


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1-based)."""
    ceiling = min(cap, base * 2 ** (min(attempt, 64) - 1))  # past the cap long before; no float overflow
    jitter = (rng or _RNG).uniform(0, ceiling / 2)
    return float(ceiling / 2 + jitter)


class wait_equal_jitter(wait_base):
    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base, self.cap = base, cap

    def __call__(self, retry_state: RetryCallState) -> float:
        return backoff_delay(retry_state.attempt_number, self.base, self.cap)


async def sleep_unless(stop: asyncio.Event | None, delay: float) -> None:
    """Sleep `delay` seconds, returning early when `stop` is set."""
    if stop is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


class Backoff:
    """For reconnect loops: wait longer after each failure, until `reset`; a stop event cuts it short."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def reset(self) -> None:
        self.attempt = 0

    async def wait(self, stop: asyncio.Event | None) -> None:
        self.attempt += 1
        await sleep_unless(stop, backoff_delay(self.attempt, self.base, self.cap))


async def retry_forever(
    what: str, op: Callable[[], Awaitable[T]], transient: Callable[[BaseException], bool], *, cap: float = 5.0
) -> T:
    """Run `op` until it succeeds, retrying (with a log line each time) whatever `transient` accepts."""

    def _log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("retry", step=what, attempt=state.attempt_number, error=str(exc) or type(exc).__name__)

    async for attempt in AsyncRetrying(
        retry=retry_if_exception(transient),
        wait=wait_equal_jitter(cap=cap),
        stop=stop_never,
        before_sleep=_log,
        reraise=True,
    ):
        with attempt:
            return await op()
    raise AssertionError("unreachable: stop_never")
