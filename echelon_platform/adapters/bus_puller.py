"""A lean JetStream pull client for the coordinator and the stage workers.

nats-py's `fetch()` awaits every message through a queue and a `wait_for` (two tasks per message); that,
not the server, caps a batch loop at about 20k msg/s on our machines. Here one subscription callback
appends deliveries to a list and a batch is handed over whole (measured: 70-88k msg/s against about 20k).
And a message that arrives while a fetch waits is handed over at once: nats-py's `fetch(n)` holds the
first one until n have come or its time-out ends (a stage's next step waited up to that long).
It speaks the plain pull API (`$JS.API.CONSUMER.MSG.NEXT`), available on NATS 2.9.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from types import TracebackType
from typing import Self

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from echelon_platform.errors import BusError

_DONE = {"404", "408"}  # no messages / request expired: this request is over
# Consumer deleted, leadership change, too many waiting pulls; 503: no responders (no such consumer).
_CONSUMER_GONE = {"409", "503"}


class BatchPuller:
    """Pull batches from one durable consumer: `async with BatchPuller(...) as p: msgs = await p.fetch(256, 0.5)`."""

    def __init__(
        self, nc: NATS, *, stream: str, durable: str, api_prefix: str = "$JS.API", linger_batch: int | None = None
    ) -> None:
        """`linger_batch`: how many messages a waiting (long-poll) request asks for, None for the whole batch.
        A stage asks for one: the server then sends nothing more for that request after the fetch returned,
        so no message waits in this buffer, unseen, while the stage is busy."""
        self._nc = nc
        self._linger_batch = linger_batch
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._ack_prefix = f"$JS.ACK.{stream}.{durable}."
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._buffer: list[Msg] = []
        self._wake = asyncio.Event()
        self._request_ids = itertools.count()
        self._current = ""
        self._request_over = False
        self._error: str | None = None

    async def start(self) -> Self:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_message)
        return self

    async def close(self) -> None:
        """Stop listening; un-acked deliveries in the buffer are redelivered by JetStream after ack_wait."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._sub.unsubscribe()
            self._sub = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _on_message(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status") if not msg.data else None
        if status is None:
            if not (msg.reply or "").startswith(self._ack_prefix):
                # Not a delivery of our consumer: a JetStream API answer someone had sent to our inbox
                # (any user may name any reply subject on a request it may make). Never treat it as an event.
                return
            # A delivery, whichever request asked for it: keep it (it is ours until acked or redelivered).
            self._buffer.append(msg)
            self._wake.set()
            return
        if msg.subject.rsplit(".", 1)[-1] != self._current:
            return  # the end of an earlier request we already gave up on
        if status in _DONE:
            self._request_over = True
        elif status in _CONSUMER_GONE:
            self._request_over = True
            self._error = (msg.headers or {}).get("Description", "consumer unavailable")
        self._wake.set()

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to `batch` messages: what is there now, else the first ones to arrive within `timeout`."""
        if len(self._buffer) < batch:
            # First take what is waiting, without lingering (the server answers 404 once it has sent it).
            await self._request({"batch": batch - len(self._buffer), "no_wait": True})
            await self._until(lambda: len(self._buffer) >= batch or self._request_over, 5.0)
            if not self._buffer and self._error is None:
                # Nothing waiting: long-poll, and hand over whatever arrives first.
                linger = batch if self._linger_batch is None else min(batch, self._linger_batch)
                await self._request({"batch": linger, "expires": int(timeout * 1e9)})
                await self._until(lambda: bool(self._buffer) or self._request_over, timeout + 1.0)
        if self._error is not None and not self._buffer:
            raise BusError(f"pull consumer unavailable: {self._error}")
        taken, self._buffer = self._buffer[:batch], self._buffer[batch:]
        return taken

    async def _request(self, request: dict[str, object]) -> None:
        self._current = str(next(self._request_ids))
        self._request_over = False
        self._error = None
        try:
            await self._nc.publish(self._next_subject, orjson.dumps(request), reply=f"{self._inbox}.{self._current}")
        except (nats.errors.Error, OSError) as exc:
            raise BusError(f"pull request failed: {exc or type(exc).__name__}") from exc

    async def _until(self, done: Callable[[], bool], timeout: float) -> None:
        # A lost reply (server restart) must not hang us: the deadline ends the wait.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not done():
                    self._wake.clear()
                    await self._wake.wait()
