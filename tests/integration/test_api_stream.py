"""The WebSocket stream on a real uvicorn server over real NATS/Redis: auth, per-user isolation, resuming
from `since` without gaps or repeats, heartbeats and the slow-consumer close; plus its pure parts."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from api.app import create_app
from api.auth import issue_jwt
from api.fanout import ClientQueue, Frame, Refused, nats_filter, pattern_matches, selected_topics
from api.options import ApiOptions
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import TOPICS, RunRequested, Subjects, make_event
from tests.factories import requested, run_events
from tests.helpers import certifier_keyring, wait_for
from tests.integration.test_api_support import (
    certified_run,
    new_account,
    publish,
    serve,
    server_nonce,
    sign,
    token,
    wallet_message,
)

Frame_ = dict[str, Any]
DEADLINE_S = 15.0


@pytest.fixture
async def server(settings: Settings, services: Services) -> AsyncIterator[str]:
    app = create_app(settings, services, options=ApiOptions(ws_heartbeat_s=0.3))
    async with serve(app) as host:
        yield host


@asynccontextmanager
async def stream(
    host: str, settings: Settings, user: str, *, admin: bool = False, rcvbuf: int | None = None
) -> AsyncIterator[ClientConnection]:
    """A client; `rcvbuf` pins its socket's receive buffer (else Linux grows it to tens of MB)."""
    sock = None
    if rcvbuf is not None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        name, port = host.split(":")
        await asyncio.get_running_loop().sock_connect(sock, (name, int(port)))
    async with connect(f"ws://{host}/api/v1/stream", sock=sock) as ws:
        await ws.send(orjson.dumps({"token": token(settings, user, admin=admin)}).decode())
        hello = await recv(ws)
        assert hello == {"type": "authenticated", "userId": user, "admin": admin}
        yield ws


async def recv(ws: ClientConnection) -> Frame_:
    return orjson.loads(await ws.recv(decode=False))  # type: ignore[no-any-return]


async def recv_reply(ws: ClientConnection) -> Frame_:
    """The next frame that is not a heartbeat (one may come first on a slow machine)."""
    while (frame := await _recv_by_deadline(ws))["type"] == "heartbeat":
        pass
    return frame


async def subscribe(ws: ClientConnection, **request: object) -> Frame_:
    await ws.send(orjson.dumps({"subscribe": request}).decode())
    answer = await recv_reply(ws)
    assert answer["type"] == "subscribed", answer
    return answer


async def events_until(ws: ClientConnection, done: Callable[[list[Frame_]], bool]) -> list[Frame_]:
    """Event frames (heartbeats skipped) until `done` holds for what arrived; fails at the deadline."""
    got: list[Frame_] = []
    while not done(got):
        frame = await _recv_by_deadline(ws)
        if frame["type"] == "event":
            got.append(frame)
    return got


async def _recv_by_deadline(ws: ClientConnection) -> Frame_:
    async with asyncio.timeout(DEADLINE_S):
        return await recv(ws)


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                await recv(ws)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_unauthenticated_or_bad_token_is_closed_with_4401(server: str) -> None:
    async with connect(f"ws://{server}/api/v1/stream") as ws:
        await ws.send('{"token": "not-a-jwt"}')
        code, reason = await closed_with(ws)
    assert code == 4401 and "invalid token" in reason
    async with connect(f"ws://{server}/api/v1/stream") as ws:
        await ws.send('{"subscribe": {"topics": ["verify.>"]}}')  # no credentials first
        code, reason = await closed_with(ws)
    assert code == 4401 and "authenticate first" in reason


async def test_a_token_in_the_url_is_refused(server: str, settings: Settings) -> None:
    """The bug: `?token=` authenticated, and URLs end up in proxy logs."""
    async with connect(f"ws://{server}/api/v1/stream?token={token(settings, 'alice')}") as ws:
        code, reason = await closed_with(ws)
    assert code == 4401 and "token in the URL is refused" in reason


async def test_token_header_or_wallet_as_first_message(server: str, settings: Settings, services: Services) -> None:
    async with connect(f"ws://{server}/api/v1/stream") as ws:
        await ws.send(orjson.dumps({"token": token(settings, "alice")}).decode())
        assert (await recv(ws))["userId"] == "alice"
    bearer = {"Authorization": f"Bearer {token(settings, 'bob')}"}
    async with connect(f"ws://{server}/api/v1/stream", additional_headers=bearer) as ws:
        assert (await recv(ws))["userId"] == "bob"
    account = new_account()
    address: str = account.address  # type: ignore[attr-defined]
    message = wallet_message(settings, address, await server_nonce(services, settings))
    proof = {"address": address, "message": message, "signature": sign(account, message)}
    async with connect(f"ws://{server}/api/v1/stream") as ws:
        await ws.send(orjson.dumps({"wallet": proof}).decode())
        assert await recv(ws) == {"type": "authenticated", "userId": f"wallet:{address}", "admin": False}
    async with connect(f"ws://{server}/api/v1/stream") as ws:  # the same signed message again: a replay
        await ws.send(orjson.dumps({"wallet": proof}).decode())
        code, reason = await closed_with(ws)
    assert code == 4401 and "already used" in reason


async def test_a_connection_is_closed_when_its_token_expires(server: str, settings: Settings) -> None:
    """The bug: expiry was checked once, at connect; a live connection outlived its token."""
    short = issue_jwt("alice", settings.jwt_secret.get_secret_value(), ttl_s=2)
    async with connect(f"ws://{server}/api/v1/stream") as ws:
        await ws.send(orjson.dumps({"token": short}).decode())
        assert (await recv(ws))["type"] == "authenticated"
        await subscribe(ws, topics=["verify.>"])
        code, reason = await closed_with(ws)  # heartbeats keep coming until the token's exp
    assert code == 4401 and "expired" in reason


async def test_connections_per_user_are_capped(server: str, settings: Settings) -> None:
    """The bug: unlimited connections per user. The cap is per user: another user still connects."""
    limit = settings.ws_max_connections_per_user
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(limit):
            await stack.enter_async_context(stream(server, settings, "alice"))
        async with connect(f"ws://{server}/api/v1/stream") as ws:
            await ws.send(orjson.dumps({"token": token(settings, "alice")}).decode())
            code, reason = await closed_with(ws)
        assert code == 4409 and "too many connections" in reason
        async with stream(server, settings, "bob"):
            pass
    # Closed connections free their slots.
    async with stream(server, settings, "alice"):
        pass


async def test_users_see_only_their_runs_and_public_certificates(
    server: str, settings: Settings, services: Services
) -> None:
    bob_events, _ = certified_run("RUNBOB", user="bob", keyring=await certifier_keyring(services.store, settings))
    alice_events = run_events("RUNALICE", n=2, failed=1, user="alice")
    bob_last = requested("RUNBOB2", "bob")  # after alice's
    async with (
        stream(server, settings, "alice") as alice,
        stream(server, settings, "bob") as bob,
        stream(server, settings, "root", admin=True) as admin,
    ):
        for ws in (alice, bob, admin):
            await subscribe(ws, topics=["verify.>"])
        refused = {"subscribe": {"topics": ["verify.run.*"], "correlationId": "run-RUNBOB"}}
        await publish(services, [requested("RUNBOB", "bob")])
        await alice.send(orjson.dumps(refused).decode())
        assert await recv_reply(alice) == {"type": "refused", "reason": "run RUNBOB not found (or not yours)"}
        seqs = await publish(services, [*bob_events[1:], *alice_events, bob_last])
        last_alice_seq = seqs[-2]

        got_alice = await events_until(alice, lambda got: bool(got) and got[-1]["seq"] == last_alice_seq)
        got_bob = await events_until(bob, lambda got: bool(got) and got[-1]["seq"] == seqs[-1])
        got_admin = await events_until(admin, lambda got: bool(got) and got[-1]["seq"] == seqs[-1])

    def seen(frames: list[Frame_]) -> list[tuple[str, str]]:
        return [(f["event"]["correlationId"], f["event"]["topic"]) for f in frames]

    assert seen(got_alice) == [("run-RUNBOB", "verify.certificate.issued")] + [
        ("run-RUNALICE", e.topic) for e in alice_events
    ]
    assert {cid for cid, _ in seen(got_bob)} == {"run-RUNBOB", "run-RUNBOB2"}
    assert len(got_bob) == len(bob_events) + 1
    assert len(got_admin) == len(bob_events) + len(alice_events) + 1
    assert [f["event"]["eventId"] for f in got_alice[1:]] == [e.event_id for e in alice_events]
    assert [f["seq"] for f in got_admin] == sorted(f["seq"] for f in got_admin)


async def test_subscriptions_outside_the_topics_are_refused(server: str, settings: Settings) -> None:
    async with stream(server, settings, "alice") as ws:
        for topics, why in (
            (["events.>"], "topics are `verify.<aggregate>.<event>` patterns"),
            (["verify.nope.*"], "matches none of"),
            (["verify.run.requested.RUN1"], "pick one run with correlationId"),
            (["verify.>.run"], "is not a topic token or wildcard"),
            ([], "topics"),
        ):
            await ws.send(orjson.dumps({"subscribe": {"topics": topics}}).decode())
            answer = await recv_reply(ws)
            assert answer["type"] == "refused" and why in answer["reason"], (topics, answer)
        await ws.send("not json")
        assert (await recv_reply(ws))["type"] == "error"


async def test_subscribing_before_reading_the_greeting_loses_nothing(
    server: str, settings: Settings, services: Services
) -> None:
    seqs = await publish(services, run_events("RUNQ", n=1, failed=0, user="alice"))
    bearer = {"Authorization": f"Bearer {token(settings, 'alice')}"}
    async with connect(f"ws://{server}/api/v1/stream", additional_headers=bearer) as ws:
        await ws.send(orjson.dumps({"subscribe": {"topics": ["verify.>"], "since": 0}}).decode())
        assert (await recv(ws))["type"] == "authenticated"
        assert (await recv_reply(ws))["type"] == "subscribed"
        got = await events_until(ws, lambda got: len(got) == len(seqs))
    assert [f["seq"] for f in got] == seqs


async def test_resume_from_since_has_no_gap_and_no_repeat(server: str, settings: Settings, services: Services) -> None:
    events = run_events("RUNR", n=6, failed=2, user="alice")  # 15 events
    first_half = await publish(services, events[:8])
    async with stream(server, settings, "alice") as ws:
        answer = await subscribe(ws, topics=["verify.run.*", "verify.replay.*"], correlationId="run-RUNR")
        assert answer["since"] == 0  # a run's subscription starts at its first event
        got = await events_until(ws, lambda got: len(got) == 5)
    assert [f["seq"] for f in got] == first_half[:5]
    since = got[-1]["seq"]
    second_half = await publish(services, events[8:])
    async with stream(server, settings, "alice") as ws:
        await subscribe(ws, topics=["verify.run.*", "verify.replay.*"], correlationId="run-RUNR", since=since)
        rest = await events_until(ws, lambda got: bool(got) and got[-1]["seq"] == second_half[-1])
    assert [f["seq"] for f in rest] == first_half[5:] + second_half
    assert [f["event"]["eventId"] for f in got + rest] == [e.event_id for e in events]


async def test_idle_connections_get_heartbeats_with_the_resume_point(
    server: str, settings: Settings, services: Services
) -> None:
    await publish(services, [requested("RUNH", "bob")])
    async with stream(server, settings, "alice") as ws:
        answer = await subscribe(ws, topics=["verify.run.*"])
        before = answer["since"]
        seq = (await publish(services, [requested("RUNH2", "bob")]))[0]  # not alice's: filtered out
        beat = await _recv_by_deadline(ws)
        while beat["type"] == "heartbeat" and beat["seq"] < seq:
            beat = await _recv_by_deadline(ws)
        assert beat == {"type": "heartbeat", "seq": seq} and before < seq


async def test_a_client_that_cannot_keep_up_is_closed_with_its_resume_point(
    settings: Settings, services: Services
) -> None:
    app = create_app(settings, services, options=ApiOptions(ws_queue_size=8, ws_heartbeat_s=60))
    # Incompressible (the connection uses permessage-deflate): ~18 MB on the wire that the client does not read.
    big = [
        make_event(
            RunRequested.model_validate(
                {**requested(f"BIG{i}").payload, "repo_url": secrets.token_urlsafe(45_000), "run_id": f"BIG{i}"}
            )
        )
        for i in range(400)
    ]
    async with serve(app) as host, stream(host, settings, "root", admin=True, rcvbuf=16_384) as ws:
        await subscribe(ws, topics=["verify.run.requested"])
        seqs = await services.bus.publish_many(big, timeout=60)

        def dropped() -> float:
            return services.metrics.registry.get_sample_value("echelon_ws_dropped_total") or 0.0

        await wait_for(dropped, timeout=DEADLINE_S, what="the server to give up on the client")
        received: list[int] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frame = await _recv_by_deadline(ws)
                if frame["type"] == "event":
                    received.append(frame["seq"])
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
    resume = orjson.loads(closed.value.rcvd.reason)["resume_since"]
    assert received and resume == received[-1] and len(received) < len(seqs)
    assert received == seqs[: len(received)]  # nothing skipped before the close
    async with serve(app) as host, stream(host, settings, "root", admin=True) as ws:
        await subscribe(ws, topics=["verify.run.requested"], since=resume)
        assert (await events_until(ws, lambda got: len(got) == 1))[0]["seq"] == seqs[len(received)]


# ---- the pure parts ----


def test_patterns_select_known_topics_only() -> None:
    assert pattern_matches("verify.run.*", "verify.run.requested")
    assert pattern_matches("verify.>", "verify.replay.scored")
    assert not pattern_matches("verify.run", "verify.run.requested")
    assert selected_topics(["verify.certificate.*"]) == {"verify.certificate.issued"}
    assert len(selected_topics(["verify.run.*", "verify.>"])) == len(TOPICS)
    for bad in ("verify", "nats.>", "verify.*.*.RUN", "verify.Run.*", "verify.>.x", "verify.rating.given"):
        with pytest.raises(Refused):
            selected_topics([bad])


def test_one_filter_subject_covers_the_patterns() -> None:
    subjects = Subjects("tabc")
    assert nats_filter(subjects, ["verify.run.*"], None) == "tabc.run.*.*"
    assert nats_filter(subjects, ["verify.replay.>"], None) == "tabc.replay.>"
    assert nats_filter(subjects, ["verify.run.requested", "verify.run.failed"], None) == "tabc.run.>"
    assert nats_filter(subjects, ["verify.run.*", "verify.replay.*"], None) == "tabc.>"
    assert nats_filter(subjects, ["verify.run.*"], "RUN1") == "tabc.*.*.RUN1"


def test_full_queue_coalesces_progress_first_then_refuses() -> None:
    queue = ClientQueue(3)
    assert queue.offer(Frame("a", 1, progress=True))
    assert queue.offer(Frame("b", 2))
    assert queue.offer(Frame("c", 3, progress=True))
    assert queue.offer(Frame("d", 4))  # the oldest progress frame (1) makes room
    assert queue.offer(Frame("e", 5))  # then the next (3)
    assert queue.offer(Frame("f", 6, progress=True))  # nothing left to drop: this one goes itself
    assert not queue.offer(Frame("g", 7))  # a non-progress frame that cannot fit: close the client
    assert [queue.pop(), queue.pop(), queue.pop(), queue.pop()] == [Frame("b", 2), Frame("d", 4), Frame("e", 5), None]
    assert queue.dropped == queue.total_dropped == 3
    queue.offer(Frame("h", 8))
    queue.offer(Frame("control"))
    queue.drop_events()  # a new subscription: old events go, control frames stay
    assert [queue.pop(), queue.pop()] == [Frame("control"), None]
