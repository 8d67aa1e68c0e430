"""One pipelined Redis connection for the API's hot paths (POST /runs admission, GET /runs/{id}).

redis-py spends tens of µs per command outside the socket (pool checkout, retry wrapper, packing, parser,
observability) and, under load, writes each concurrent request's command on its own pooled connection.
A lane is a single connection shared by every request of the process: the commands of one event-loop turn
leave in one write and their replies come back in order (Redis answers a connection's commands in order),
so 32 concurrent requests cost one send and one receive instead of 32 of each.

Same failure behaviour as the redis-py client it is built from: errors are redis-py's exception types
(ConnectionError, TimeoutError, ResponseError), a command waits at most `socket_timeout`, and a command
whose connection was lost is retried once on a new one. Anything else (TLS, pub/sub, blocking commands)
stays on redis-py: a lane for a client it cannot mirror just passes commands to that client.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
import redis.exceptions


class _Connection(asyncio.Protocol):
    """The socket, the queue of waiting commands, and the write buffer of the current loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader(replyError=redis.exceptions.ResponseError)
        # (reply future, when sent): Redis answers in order, so the oldest waiter gets the next reply.
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while (reply := self._reader.gets()) is not False:
            future = waiting.popleft()[0]
            if not future.done():  # a cancelled caller's reply is dropped; the order stays right
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.exceptions.ConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))

    def send(self, command: bytes) -> asyncio.Future[Any]:
        if self.lost is not None:
            raise self.lost
        future = self._loop.create_future()
        idle = not self._waiting
        self._waiting.append((future, time.monotonic()))
        if idle and self._transport is not None:
            # Nothing in flight: a lone command leaves now (no wait for the end of the loop turn), so its
            # caller can work while Redis answers. Under load, the commands of one turn share one write.
            self._transport.write(command)
        else:
            if not self._out:
                self._loop.call_soon(self._flush)
            self._out.append(command)
        if self._watchdog is None and self._timeout is not None:
            self._watchdog = self._loop.call_later(self._timeout, self._check_stalled)
        return future

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(redis.exceptions.ConnectionError("Redis lane closed"))

    def _flush(self) -> None:
        if self._transport is not None and self.lost is None and self._out:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _check_stalled(self) -> None:
        # One timer per lane instead of one per command: only the oldest command can be overdue.
        self._watchdog = None
        if not self._waiting or self._timeout is None:
            return
        overdue = self._waiting[0][1] + self._timeout - time.monotonic()
        if overdue <= 0:
            self._fail(redis.exceptions.TimeoutError(f"Redis did not answer within {self._timeout:g} s"))
            if self._transport is not None:
                self._transport.abort()
            return
        self._watchdog = self._loop.call_later(overdue, self._check_stalled)

    def _fail(self, error: Exception) -> None:
        if self.lost is None:
            self.lost = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)


class RedisLane:
    """`await lane.call("GET", key)`; `lane.script(text)` for EVALSHA with the EVAL fallback."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        # Plain TCP or a Unix socket: anything else (TLS, ...) keeps going through redis-py.
        self._native = pool.connection_class in (aioredis.Connection, aioredis.UnixDomainSocketConnection)
        self._path: str | None = kwargs.get("path")
        self._host: str = kwargs.get("host", "localhost")
        self._port: int = int(kwargs.get("port", 6379))
        self._db = int(kwargs.get("db") or 0)
        self._username: str | None = kwargs.get("username")
        self._password: str | None = kwargs.get("password")
        self._connect_timeout: float | None = kwargs.get("socket_connect_timeout")
        self._timeout: float | None = kwargs.get("socket_timeout")
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    async def call(self, *args: Any) -> Any:
        return await self.begin(*args)

    def begin(self, *args: Any) -> Coroutine[Any, Any, Any]:
        """`call`, with the command sent (or queued for this loop turn) before the caller awaits the reply,
        so the caller can work while Redis answers. The result must be awaited."""
        if not self._native:
            return self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        command = hiredis.pack_command(args)
        connection = self._connection
        sent = connection.send(command) if connection is not None and connection.lost is None else None
        return self._reply(command, sent)

    async def _reply(self, command: bytes, sent: asyncio.Future[Any] | None) -> Any:
        try:
            if sent is None:
                return await self._send(command)
            return _checked_reply(await sent)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            # As redis-py (retry_on_timeout, one retry): once more on a fresh connection.
            return await self._send(command)

    def script(self, text: str) -> LaneScript:
        return LaneScript(self, text)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _send(self, command: bytes) -> Any:
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self._connect()
        return _checked_reply(await connection.send(command))

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            connection = self._connection
            if connection is not None and connection.lost is None:
                return connection  # another request connected while this one waited
            loop = asyncio.get_running_loop()
            connection = _Connection(loop, self._timeout)
            try:
                async with asyncio.timeout(self._connect_timeout):
                    if self._path is not None:
                        await loop.create_unix_connection(lambda: connection, self._path)
                    else:
                        await loop.create_connection(lambda: connection, self._host, self._port)
                    if self._password is not None:
                        auth = (self._username, self._password) if self._username else (self._password,)
                        await self._checked(connection, ("AUTH", *auth))
                    if self._db:
                        await self._checked(connection, ("SELECT", self._db))
            except TimeoutError as exc:
                connection.close()
                raise redis.exceptions.TimeoutError(f"connecting to Redis timed out: {exc}") from exc
            except OSError as exc:
                connection.close()
                raise redis.exceptions.ConnectionError(f"cannot connect to Redis: {exc}") from exc
            self._connection = connection
            return connection

    @staticmethod
    async def _checked(connection: _Connection, args: tuple[Any, ...]) -> None:
        reply = await connection.send(hiredis.pack_command(args))
        if isinstance(reply, redis.exceptions.ResponseError):
            connection.close()
            raise _response_error(reply)


def _checked_reply(reply: Any) -> Any:
    if isinstance(reply, redis.exceptions.ResponseError):
        raise _response_error(reply)
    return reply


def _response_error(reply: redis.exceptions.ResponseError) -> redis.exceptions.RedisError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return redis.exceptions.NoScriptError(message)
    if message.startswith(("NOAUTH", "WRONGPASS")):
        return redis.exceptions.AuthenticationError(message)
    return reply


class LaneScript:
    """A Lua script run by its SHA1 (EVAL once, when Redis does not have it yet)."""

    def __init__(self, lane: RedisLane, text: str) -> None:
        self._lane = lane
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        return await self.begin(keys, args)

    def begin(self, keys: tuple[str, ...], args: tuple[Any, ...]) -> Coroutine[Any, Any, Any]:
        """Run the script, sent before the caller awaits its reply (`RedisLane.begin`)."""
        return self._reply(self._lane.begin("EVALSHA", self.sha, len(keys), *keys, *args), keys, args)

    async def _reply(self, sent: Coroutine[Any, Any, Any], keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        try:
            return await sent
        except redis.exceptions.NoScriptError:
            return await self._lane.call("EVAL", self.text, len(keys), *keys, *args)
