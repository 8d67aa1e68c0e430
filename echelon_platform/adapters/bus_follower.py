"""Follow the stream in order without a consumer: direct gets by sequence, woken by the live subject.

Readers (`echelon tail`, the API's WebSocket stream) may create no consumer: the create-consumer API takes
the consumer's name in its body, so a right to create ephemeral ones is a right to re-configure any durable
one (bus_access.py). A follower instead asks the stream for the next stored message matching its subject
at or after a sequence (`DIRECT.GET` with `next_by_subj`, NATS 2.9+), in stream order, with no gap and no
repeat. A plain subscription on the same subject only rings a bell: something new may be stored, ask again
(a short poll covers a bell that rang before the message was stored, or was missed in a reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Self

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from echelon_platform.adapters.bus import Bus
from echelon_platform.errors import BusError

log = structlog.get_logger(__name__)

_AFTER_BELL_S = 0.02  # the bell may ring just before the message is stored: look again soon


@dataclass(frozen=True, slots=True)
class StoredMsg:
    seq: int  # stream sequence
    subject: str
    data: bytes


class StreamFollower:
    """`async with StreamFollower(bus, "verify.>", after=0) as f: msg = await f.next(timeout)`."""

    def __init__(self, bus: Bus, subject: str, *, after: int = 0, poll_s: float = 1.0) -> None:
        self.bus = bus
        self.subject = subject
        self.position = after  # the last sequence handed out (or skipped)
        self.poll_s = poll_s
        self._bell = asyncio.Event()
        self._sub: Subscription | None = None

    async def start(self) -> Self:
        async def ring(_: Msg) -> None:
            self._bell.set()

        try:
            self._sub = await self.bus.nc.subscribe(self.subject, cb=ring)
        except (nats.errors.Error, OSError) as exc:
            raise BusError(f"cannot follow {self.subject}: {exc or type(exc).__name__}") from exc
        return self

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def wake(self) -> None:
        """End a wait for the bell now (the caller is closing)."""
        self._bell.set()

    async def _get(self) -> StoredMsg | None:
        try:
            raw = await self.bus.js.get_msg(
                self.bus.stream, seq=self.position + 1, subject=self.subject, next=True, direct=True
            )
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot read the stream after {self.position}: {exc or type(exc).__name__}") from exc
        return StoredMsg(seq=int(raw.seq or 0), subject=str(raw.subject or ""), data=raw.data or b"")

    async def next(self, timeout: float | None = None) -> StoredMsg | None:
        """The next stored message on the subject after `position`; None after `timeout` s without one."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        rang = False
        while True:
            self._bell.clear()
            msg = await self._get()
            if msg is not None:
                self.position = msg.seq
                return msg
            wait = _AFTER_BELL_S if rang else self.poll_s
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    return None
            try:
                async with asyncio.timeout(wait):
                    await self._bell.wait()
                rang = True
            except TimeoutError:
                rang = False


class FollowTask:
    """A follower feeding a callback from a task (the shape of a callback subscription)."""

    def __init__(self, follower: StreamFollower, cb: Callable[[StoredMsg], Awaitable[None]]) -> None:
        self.follower = follower
        self._closing = False
        self._task = asyncio.create_task(self._run(cb))

    async def _run(self, cb: Callable[[StoredMsg], Awaitable[None]]) -> None:
        while not self._closing:
            try:
                msg = await self.follower.next(self.follower.poll_s)  # None now and then: see _closing
            except BusError as exc:  # NATS restarting: the position is kept, so nothing is skipped
                if self._closing:
                    return
                log.warning("bus.follow_failed", subject=self.follower.subject, error=str(exc))
                await asyncio.sleep(self.follower.poll_s)
                continue
            if msg is not None and not self._closing:
                await cb(msg)

    @property
    def task(self) -> asyncio.Task[None]:
        return self._task

    async def unsubscribe(self) -> None:
        # The flag as well as the cancel: Python 3.11's wait_for (inside nats-py's request) swallows a
        # cancel that lands as its reply arrives, and the loop would go on following for good.
        self._closing = True
        self.follower.wake()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BusError):
            await self._task
        await self.follower.close()


async def follow(
    bus: Bus, subject: str, after: int, cb: Callable[[StoredMsg], Awaitable[None]], *, poll_s: float = 1.0
) -> FollowTask:
    """Call `cb` with every message on `subject` after stream sequence `after`, in order, until unsubscribed."""
    follower = await StreamFollower(bus, subject, after=after, poll_s=poll_s).start()
    return FollowTask(follower, cb)
