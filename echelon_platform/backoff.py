"""Waiting helpers shared by the long-running loops (coordinator, stage workers, watchdog)."""

from __future__ import annotations

import asyncio
import contextlib
import random


async def sleep_unless(stop: asyncio.Event | None, delay: float) -> None:
    """Sleep `delay` seconds, returning early when `stop` is set."""
    if stop is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


class Backoff:
    """Capped, jittered exponential backoff that a stop event can cut short."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def reset(self) -> None:
        self.attempt = 0

    async def wait(self, stop: asyncio.Event | None) -> None:
        delay = min(self.cap, self.base * 2**self.attempt) * random.uniform(0.5, 1.0)
        self.attempt += 1
        await sleep_unless(stop, delay)
