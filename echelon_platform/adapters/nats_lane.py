"""One lean connection for the API's acknowledged JetStream publishes (ADR 0007).

nats-py's `js.publish` costs four event-loop turns besides the server's own time: the write waits for the
client's flusher task (the API's connection has no reconnect buffer, so every publish waits for it), and
the acknowledgement passes through the reader task, the request future and `wait_for`'s waiter before the
caller resumes. Under load a turn lasts milliseconds, so those turns, not NATS, were most of POST /runs's
time. A lane is an `asyncio.Protocol` on a connection of its own: a publish is written at once when nothing
else is in flight (else with the other publishes of this loop turn, in one write), and its acknowledgement
is parsed in `data_received`, which resolves the caller's future directly: one turn.

What it speaks: plain TCP (`nats://` URLs, tried in order), the bus's user and password, `HPUB` with
`Nats-Msg-Id` and `Nats-Expected-Stream`, replies on an inbox of its own. A URL it cannot serve (TLS,
WebSocket) gets no lane: the bus keeps nats-py's path. Nothing is buffered: a publish while the connection is
down connects again or fails at once, and a connection lost with publishes in flight fails them
(`BusError`: the caller answers "not accepted", and a retry with the same message id is stored once).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from echelon_platform.errors import BusError

CONNECT_TIMEOUT_S = 5.0


class LaneRefused(BusError):
    """The server will not take the lane (it asks for TLS, or refuses its credentials before any publish):
    the bus keeps nats-py's path, which may speak what the lane does not (TLS, tokens, credential files)."""


@dataclass(frozen=True, slots=True)
class LaneAck:
    seq: int
    duplicate: bool


def lane_servers(url: str) -> list[tuple[str, int, str | None, str | None]] | None:
    """(host, port, user, password) per comma-separated URL, or None if any is not plain `nats://`."""
    servers = []
    for part in (u.strip() for u in url.split(",")):
        if not part:
            continue
        parts = urlsplit(part if "://" in part else f"nats://{part}")
        if parts.scheme != "nats" or parts.hostname is None:
            return None
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if user is not None and password is None:
            return None  # a token (nats://TOKEN@host): nats-py's path speaks it
        servers.append((parts.hostname, parts.port or 4222, user, password))
    return servers or None


class _Connection(asyncio.Protocol):
    """The socket, the publishes waiting for their acknowledgement (by reply token), and the parser."""

    def __init__(self, loop: asyncio.AbstractEventLoop, inbox: bytes) -> None:
        self._loop = loop
        self._inbox = inbox
        self._buffer = bytearray()
        self._body: tuple[bytes, int, int] | None = None  # (subject, header bytes, total bytes) of a message
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        # token -> (future, subject, deadline), oldest first
        self.waiting: dict[bytes, tuple[asyncio.Future[LaneAck], bytes, float]] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self.info: dict[str, Any] = {}
        self.greeted: asyncio.Future[None] = loop.create_future()  # INFO seen
        self.ready: asyncio.Future[None] = loop.create_future()  # CONNECT and SUB accepted (PONG)
        self.lost: BusError | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(BusError(f"NATS connection lost: {exc or 'closed by the server'}"))

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def send(self, token: bytes, subject: bytes, command: bytes, timeout: float) -> asyncio.Future[LaneAck]:
        if self.lost is not None:
            raise self.lost
        future: asyncio.Future[LaneAck] = self._loop.create_future()
        idle = not self.waiting
        deadline = self._loop.time() + timeout
        self.waiting[token] = (future, subject, deadline)
        if self._watchdog is None or deadline < self._watchdog.when():
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._watchdog = self._loop.call_at(deadline, self._expire)
        if idle:
            self.write(command)  # nothing in flight: no reason to wait for the end of this loop turn
        else:
            if not self._out:
                self._loop.call_soon(self._flush)
            self._out.append(command)
        return future

    def _expire(self) -> None:
        # One timer per connection instead of one per publish, for the oldest publish in flight. An overdue
        # one fails, and so does the connection (as the Redis lane's): a server that stopped answering, or a
        # connection that died without a word, is replaced at the next publish instead of timing out each.
        self._watchdog = None
        for token in [t for t, (f, _, _) in self.waiting.items() if f.done()]:
            del self.waiting[token]  # a cancelled caller that has not cleaned up yet
        if not self.waiting:
            return
        token, (future, _, deadline) = min(self.waiting.items(), key=lambda item: item[1][2])
        if deadline > self._loop.time():
            self._watchdog = self._loop.call_at(deadline, self._expire)
            return
        del self.waiting[token]
        if not future.done():
            future.set_exception(BusError("JetStream did not acknowledge the publish in time"))
        self._fail(BusError("NATS connection dropped: a publish was not acknowledged in time"))
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(BusError("NATS publish lane closed"))

    def _flush(self) -> None:
        if self.lost is None and self._out:
            self.write(b"".join(self._out))
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            if self._body is not None:
                subject, header_size, size = self._body
                if len(buffer) < size + 2:
                    return
                body = bytes(buffer[:size])
                del buffer[: size + 2]
                self._body = None
                self._answer(subject, body[:header_size], body[header_size:])
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                return
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            self._control(line)

    def _control(self, line: bytes) -> None:
        op, _, rest = line.partition(b" ")
        op = op.upper()
        if op == b"MSG":  # subject sid [reply] size
            fields = rest.split()
            self._body = (fields[0], 0, int(fields[-1]))
        elif op == b"HMSG":  # subject sid [reply] header-size total-size
            fields = rest.split()
            self._body = (fields[0], int(fields[-2]), int(fields[-1]))
        elif op == b"PING":
            self.write(b"PONG\r\n")
        elif op == b"PONG":
            if not self.ready.done():
                self.ready.set_result(None)
        elif op == b"INFO":
            self.info = orjson.loads(rest)
            if not self.greeted.done():
                self.greeted.set_result(None)
        elif op == b"-ERR":
            self._error(rest.decode("utf-8", "replace").strip().strip("'"))

    def _error(self, message: str) -> None:
        error = BusError(f"NATS refused: {message}")
        if not self.ready.done():
            self.ready.set_exception(LaneRefused(f"NATS refused: {message}"))
            return
        if message.lower().startswith("permissions violation for publish to"):
            # The server goes on; only the publishes to that subject are refused.
            subject = message.rpartition(" ")[2].strip('"').encode()
            for token, (future, to, _) in list(self.waiting.items()):
                if to == subject:
                    del self.waiting[token]
                    if not future.done():
                        future.set_exception(error)
        # Any other -ERR is followed by the server closing the connection: connection_lost fails the rest.

    def _answer(self, subject: bytes, headers: bytes, payload: bytes) -> None:
        token = subject.rpartition(b".")[2]
        entry = self.waiting.pop(token, None)
        if entry is None or entry[0].done():
            return  # timed out meanwhile, or not ours
        future = entry[0]
        status = headers[9:12] if headers.startswith(b"NATS/1.0 ") else b""
        if status == b"503":
            future.set_exception(BusError("no stream answered the publish (503 no responders)"))
            return
        try:
            ack = orjson.loads(payload)
            if "error" in ack:
                error = ack["error"]
                detail = error.get("description", error) if isinstance(error, dict) else error
                future.set_exception(BusError(f"JetStream refused the publish: {detail}"))
                return
            future.set_result(LaneAck(int(ack["seq"]), bool(ack.get("duplicate", False))))
        except Exception as exc:  # whatever the answer holds, its caller gets an answer
            future.set_exception(BusError(f"JetStream answered the publish with {payload[:200]!r}: {exc}"))

    def _fail(self, error: BusError) -> None:
        if self.lost is None:
            self.lost = error
        for future, _, _ in self.waiting.values():
            if not future.done():
                future.set_exception(error)
        self.waiting.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for waiter in (self.greeted, self.ready):
            if not waiter.done():
                waiter.set_exception(error)
                waiter.exception()  # retrieved: nobody may be waiting for it any more


class NatsPublishLane:
    """`await lane.publish(subject, payload, msg_id)` → the stream's acknowledgement."""

    def __init__(
        self,
        servers: list[tuple[str, int, str | None, str | None]],
        *,
        stream: str,
        name: str,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self._servers = servers
        self._stream = stream.encode()
        self._name = name
        self._user = user
        self._password = password
        # Replies come to this inbox only (no role may publish to _INBOX.>, so nobody can forge them).
        self._inbox = b"_INBOX." + os.urandom(12).hex().encode()
        self._counter = 0
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._attempts = 0  # connects tried
        self._failed: BusError | None = None  # why the last one failed
        self._closed = False

    async def publish(self, subject: str, payload: bytes, msg_id: str, *, timeout: float) -> LaneAck:
        connection = await self._connected(timeout)
        token, future = self._send(connection, subject, payload, msg_id, timeout)
        try:
            return await future
        finally:
            connection.waiting.pop(token, None)  # answered, timed out, or the caller was cancelled

    async def _connected(self, timeout: float) -> _Connection:
        connection = self._connection
        if connection is None or connection.lost is not None:
            try:
                async with asyncio.timeout(timeout):  # the publish's deadline covers connecting too
                    connection = await self._connect()
            except TimeoutError as exc:
                raise BusError(f"no NATS connection for publishing within {timeout:g} s") from exc
        return connection

    def _send(
        self, connection: _Connection, subject: str, payload: bytes, msg_id: str, timeout: float
    ) -> tuple[bytes, asyncio.Future[LaneAck]]:
        headers = b"NATS/1.0\r\nNats-Msg-Id: %s\r\nNats-Expected-Stream: %s\r\n\r\n" % (
            _header_value(msg_id),
            self._stream,
        )
        limit = connection.info.get("max_payload")
        if isinstance(limit, int) and len(headers) + len(payload) > limit:
            raise BusError(f"the message is {len(headers) + len(payload)} bytes, NATS takes at most {limit}")
        self._counter += 1
        token = b"%x" % self._counter
        to = subject.encode()
        size = len(headers) + len(payload)
        command = b"HPUB %s %s.%s %d %d\r\n%s%s\r\n" % (to, self._inbox, token, len(headers), size, headers, payload)
        return token, connection.send(token, to, command, timeout)

    async def start(self) -> bool:
        """Connect now (not at the first publish); False when the server needs what a lane does not speak."""
        try:
            await self._connect()
        except LaneRefused:
            return False
        return True

    async def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        attempts = self._attempts
        async with self._connecting:
            if self._closed:
                raise BusError("NATS publish lane closed")
            connection = self._connection
            if connection is not None and connection.lost is None:
                return connection  # another publish connected while this one waited
            if self._attempts > attempts and self._failed is not None:
                raise self._failed  # an attempt made while this publish waited failed: do not wait for another
            self._attempts += 1
            problems = []
            for host, port, url_user, url_password in self._servers:
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT_S):
                        connection = await self._open(host, port, url_user, url_password)
                except LaneRefused:
                    raise
                except (OSError, TimeoutError, BusError) as exc:
                    problems.append(f"{host}:{port}: {exc or type(exc).__name__}")
                    continue
                self._connection, self._failed = connection, None
                return connection
            self._failed = BusError(f"cannot connect to NATS for publishing ({'; '.join(problems)})")
            raise self._failed

    async def _open(self, host: str, port: int, url_user: str | None, url_password: str | None) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(loop, self._inbox)
        await loop.create_connection(lambda: connection, host, port)
        try:
            await connection.greeted
            if connection.info.get("tls_required"):
                raise LaneRefused("the server requires TLS")
            options: dict[str, Any] = {
                "verbose": False,
                "pedantic": False,
                "headers": True,
                "no_responders": True,
                "protocol": 1,
                "lang": "python-lane",
                "version": "1",
                "name": self._name,
            }
            user = self._user or url_user
            password = self._password or url_password
            if user is not None:
                options["user"] = user
                options["pass"] = password or ""
            connection.write(b"CONNECT %s\r\nSUB %s.* 1\r\nPING\r\n" % (orjson.dumps(options), self._inbox))
            await connection.ready
        except BaseException:
            connection.close()
            raise
        return connection


def _header_value(value: str) -> bytes:
    raw = value.encode()
    if b"\r" in raw or b"\n" in raw:
        raise BusError("a message id may not hold a line break")
    return raw
