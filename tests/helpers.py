"""Test helpers: wait on a condition with a deadline (never sleep for an effect); stop role processes."""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from echelon_platform.adapters.signing_keys import Keyring, load_keyring, publish_keys

if TYPE_CHECKING:
    from echelon_platform.adapters.adaptive_limit import AdaptiveLimiter
    from echelon_platform.adapters.event_store import EventStore
    from echelon_platform.config import Settings

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = 20.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        result = probe()
        last = await result if inspect.isawaitable(result) else result  # type: ignore[assignment]
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    """SIGTERM whichever still run (as a supervisor stops them), then wait; SIGKILL one that hangs."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class HeldCalls:
    """Calls that take a slot of a limiter and hold it until `release` is set, counting how many are inside
    their slots at once (`in_flight`) and the most there ever were (`peak`)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.release = asyncio.Event()

    async def call(self, limiter: AdaptiveLimiter) -> None:
        async with limiter.slot():
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            await self.release.wait()
            self.in_flight -= 1


async def certifier_keyring(store: EventStore, settings: Settings) -> Keyring:
    """The certify stage's keyring for `settings`, with its public key published, as the stage does at start:
    certificates it signs are the ones the writer logs."""
    keyring = load_keyring(settings)
    await publish_keys(store, keyring)
    return keyring
