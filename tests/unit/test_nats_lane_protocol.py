"""The publish lane's protocol side (echelon_platform/adapters/nats_lane.py) fed bytes as a server would send
them: split anywhere, answers of every kind, and its timer. (The lane against real servers:
tests/integration/test_nats_lane.py.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from echelon_platform.adapters.nats_lane import LaneAck, NatsPublishLane, _Connection, lane_servers
from echelon_platform.errors import BusError

INBOX = b"_INBOX.test"


class Transport:
    """What the connection writes, and whether it was closed."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def _connected() -> tuple[_Connection, Transport]:
    connection = _Connection(asyncio.get_running_loop(), INBOX)
    transport = Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport


def _msg(token: bytes, payload: bytes, status: bytes | None = None) -> bytes:
    subject = INBOX + b"." + token
    if status is None:
        return b"MSG %s 1 %d\r\n%s\r\n" % (subject, len(payload), payload)
    headers = b"NATS/1.0 %s\r\n\r\n" % status
    return b"HMSG %s 1 %d %d\r\n%s%s\r\n" % (subject, len(headers), len(headers) + len(payload), headers, payload)


async def test_answers_split_anywhere_reach_their_callers() -> None:
    connection, transport = _connected()
    first = connection.send(b"1", b"s.a", b"HPUB ...", 5)
    second = connection.send(b"2", b"s.b", b"HPUB ...", 5)
    third = connection.send(b"3", b"s.c", b"HPUB ...", 5)
    stream = (
        _msg(b"2", b'{"stream":"S","seq":8,"duplicate":true}')
        + b"PING\r\n"
        + _msg(b"1", b'{"stream":"S","seq":9}')
        + _msg(b"3", b"", status=b"503")
    )
    for i in range(len(stream)):  # one byte at a time
        connection.data_received(stream[i : i + 1])
    assert await first == LaneAck(9, False)
    assert await second == LaneAck(8, True)
    with pytest.raises(BusError, match="no responders"):
        await third
    assert b"PONG\r\n" in transport.written


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"}}', "expected"),
        (b'{"error":"boom"}', "boom"),
        (b'{"stream":"S"}', "answered"),
        (b"not json", "answered"),
        (b"[1, 2]", "answered"),
    ],
)
async def test_every_odd_answer_is_an_error_for_its_caller(payload: bytes, reason: str) -> None:
    connection, _ = _connected()
    future = connection.send(b"7", b"s.x", b"HPUB ...", 5)
    connection.data_received(_msg(b"7", payload))
    with pytest.raises(BusError, match=reason):
        await asyncio.wait_for(future, 1)
    ok = connection.send(b"8", b"s.x", b"HPUB ...", 5)
    connection.data_received(_msg(b"8", b'{"stream":"S","seq":1}'))
    assert (await ok).seq == 1  # still in step


async def test_a_shorter_time_out_is_kept_and_an_overdue_publish_drops_the_connection() -> None:
    connection, transport = _connected()
    slow = connection.send(b"1", b"s.a", b"HPUB ...", 30)
    started = time.monotonic()
    quick = connection.send(b"2", b"s.b", b"HPUB ...", 0.1)
    with pytest.raises(BusError, match="in time"):
        await quick
    assert time.monotonic() - started < 5  # not at the first publish's 30 s
    with pytest.raises(BusError, match="dropped"):
        await slow  # the connection went with it
    assert transport.closed and connection.lost is not None


async def test_a_cancelled_caller_does_not_drop_the_connection() -> None:
    connection, transport = _connected()
    forgotten = connection.send(b"1", b"s.a", b"HPUB ...", 0.05)
    forgotten.cancel()  # its caller was cancelled and has not cleaned up yet
    waiting = connection.send(b"2", b"s.b", b"HPUB ...", 30)
    await asyncio.sleep(0.2)  # past the cancelled one's deadline
    assert not transport.closed and not waiting.done()
    connection.data_received(_msg(b"2", b'{"stream":"S","seq":3}'))
    assert (await waiting).seq == 3


def test_a_token_url_gets_no_lane() -> None:
    assert lane_servers("nats://s3cr3t-token@127.0.0.1:4222") is None


async def test_connect_failures_are_quick_and_shared() -> None:
    """A server that takes the connection and says nothing: each publish fails within its own time-out, and
    those right behind the failure fail at once instead of each waiting for a connect of its own."""
    held: list[Any] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lane = NatsPublishLane([("127.0.0.1", port, None, None)], stream="S", name="test")
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(lane.publish("s.x", b"{}", f"id-{i}", timeout=0.5) for i in range(8)), return_exceptions=True
        )
        assert all(isinstance(r, BusError) for r in results)
        assert time.monotonic() - started < 3  # one connect's worth, not eight
        await lane.close()
        with pytest.raises(BusError, match="closed"):
            await lane.publish("s.x", b"{}", "after-close", timeout=0.5)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
