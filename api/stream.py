"""`GET /api/v1/stream`: live events over a WebSocket, read straight from JetStream.

Protocol (JSON text frames):

1. Authenticate: an `Authorization: Bearer` header on the upgrade, or as the first message
   `{"token": "<JWT>"}` / `{"wallet": {"address", "message", "signature"}}` (an EIP-4361 message as plain
   text, with a nonce from `GET /api/v1/auth/nonce`). A token in the URL (`?token=`) is refused: URLs end
   up in proxy and access logs. Failure closes with 4401 and the reason. The server answers
   `{"type": "authenticated", ...}`. When the credential expires (a token's `exp`, a wallet message's
   `Expiration Time`) the connection is closed with 4401; reconnect with a fresh one. A user has at most
   `ws_max_connections_per_user` connections per API process; one more is closed with 4409.
   Until it authenticates, a socket counts against `ws_max_unauthenticated` (per API process) and
   `ws_max_unauthenticated_per_address`; over either it is closed with 1013 (try again later). The first
   message is at most `ws_first_message_bytes` (else 1009, message too big); uvicorn closes any message over
   `ws_max_message_bytes` with 1009 before buffering it whole.
2. Subscribe: `{"subscribe": {"topics": ["verify.run.*", ...], "correlationId": "run-…", "since": <seq>}}`.
   Answer: `{"type": "subscribed", "since": S, ...}` (events after stream sequence S follow) or
   `{"type": "refused", "reason": ...}`. Without `since`, a run's subscription starts at its first event
   and a general one at the current end of the stream. A new subscribe replaces the current one.
3. Events: `{"type": "event", "seq": <stream seq>, "event": <envelope>}` in stream order. You see your own
   runs' events (admins: all) and every `verify.certificate.issued`.
   `{"type": "coalesced", "dropped": n}`: n progress events (replay.*, run.ingesting) were skipped because
   you fell behind. `{"type": "heartbeat", "seq": S}` when idle: nothing for you up to S.
4. A client that falls 1,024 frames behind with nothing left to coalesce is closed with 4429 and reason
   `{"resume_since": N}`: reconnect and subscribe with `since` = the last seq you received — no gap, no repeat.

Each subscription follows the stream by direct gets (echelon_platform/adapters/bus_follower.py): no
consumer at all, so nothing to clean up after a client, and the API's NATS user needs no right to create one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from ulid import ULID

from api.auth import Principal, authenticate
from api.fanout import (
    PROGRESS_TOPICS,
    PUBLIC_TOPICS,
    ClientQueue,
    Frame,
    OwnerCache,
    PendingSockets,
    Refused,
    Subscribe,
    nats_filter,
    selected_topics,
    split_subject,
)
from api.options import ApiOptions
from api.runs import load_run
from api.wallet import WalletProof
from echelon_platform.adapters.bus_follower import StoredMsg, follow
from echelon_platform.adapters.readmodel_store import RunReader
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import RunRequested
from echelon_platform.errors import AuthError, EchelonError

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_MANY = 4409
CLOSE_SLOW_CONSUMER = 4429
CLOSE_INTERNAL = 1011
CLOSE_TOO_BIG = 1009
CLOSE_TRY_LATER = 1013

log = structlog.get_logger(__name__)
router = APIRouter(tags=["stream"])


def owner_cache(services: Services, reader: RunReader) -> OwnerCache:
    async def lookup(run_id: str) -> str | None:
        state = await load_run(services, run_id, reader)
        return state.user_id if state is not None else None

    return OwnerCache(lookup)


def _json(data: dict[str, Any]) -> str:
    return orjson.dumps(data).decode()


async def _close(ws: WebSocket, code: int, reason: str, timeout_s: float) -> None:
    """Close with a reason (≤ 123 bytes on the wire); give up on a client that cannot even take that."""
    short = reason.encode()[:123].decode(errors="ignore")
    try:
        async with asyncio.timeout(timeout_s):
            await ws.close(code, short)
    except (TimeoutError, RuntimeError, WebSocketDisconnect, OSError):
        pass


class MessageTooBig(Exception):
    """A message over the size allowed at this point of the protocol."""


async def _receive_json(ws: WebSocket, max_bytes: int | None = None) -> Any:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    raw = message.get("text") or message.get("bytes") or b""
    # A text frame's length in characters bounds its UTF-8 bytes from below: checked before encoding.
    if max_bytes is not None and (len(raw) > max_bytes or (isinstance(raw, str) and len(raw.encode()) > max_bytes)):
        raise MessageTooBig(f"the first message is at most {max_bytes} bytes (credentials only)")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


async def _credentials(ws: WebSocket, settings: Settings, services: Services) -> Principal:
    if "token" in ws.query_params:
        raise AuthError('a token in the URL is refused (it ends up in logs): send {"token": …} as the first message')
    header = ws.headers.get("authorization", "")
    bearer = header[7:].strip() if header[:7].lower() == "bearer " else None
    nonces = ws.app.state.api_keys.nonces(settings.siwe_nonce_ttl_s)
    if bearer:
        return await authenticate(settings, nonces, bearer=bearer, wallet=None)
    first = await _receive_json(ws, settings.ws_first_message_bytes)
    if isinstance(first, dict) and isinstance(first.get("token"), str):
        return await authenticate(settings, nonces, bearer=first["token"], wallet=None)
    wallet = first.get("wallet") if isinstance(first, dict) else None
    if isinstance(wallet, dict) and all(isinstance(wallet.get(k), str) for k in ("address", "message", "signature")):
        proof = WalletProof(address=wallet["address"], message=wallet["message"], signature=wallet["signature"])
        return await authenticate(settings, nonces, bearer=None, wallet=proof)
    raise AuthError('authenticate first: a first message {"token": …} or {"wallet": {…}}')


class StreamSession:
    """One authenticated client: a reader (subscribe messages), a writer (queue → socket) and, per
    subscription, a stream follower whose callback filters, authorizes and queues events."""

    def __init__(
        self, ws: WebSocket, user: Principal, services: Services, options: ApiOptions, owners: OwnerCache
    ) -> None:
        self.ws = ws
        self.user = user
        self.services = services
        self.options = options
        self.owners = owners
        self.queue = ClientQueue(options.ws_queue_size)
        self.last_sent = 0  # seq of the last event frame handed to the socket
        self.processed = 0  # every event up to here is queued or not for this client
        self._sub: Any = None
        self._generation = 0
        self._topics: frozenset[str] = frozenset()
        self._stop = asyncio.Event()
        self._close: tuple[int, str] | None = None

    async def run(self) -> None:
        tasks = [asyncio.create_task(c) for c in (self._read(), self._write(), self._stop.wait(), self._expire())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            await self._unsubscribe()
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, WebSocketDisconnect | asyncio.CancelledError):
                log.error("stream.failed", error=str(result) or type(result).__name__)
                self._close = self._close or (CLOSE_INTERNAL, "internal error; reconnect with since")
        if self._close is not None:
            await _close(self.ws, *self._close, timeout_s=self.options.ws_close_timeout_s)

    async def _expire(self) -> None:
        """Close with 4401 when the credential expires: a connection must not outlive its token."""
        if self.user.expires_at is None:
            await asyncio.Event().wait()  # never expires: wait for the other tasks
        else:
            await asyncio.sleep(max(0.0, self.user.expires_at - time.time()))
        self._end(CLOSE_UNAUTHORIZED, "credentials expired: reconnect with a fresh token")

    async def _read(self) -> None:
        while True:
            message = await _receive_json(self.ws)
            request = message.get("subscribe") if isinstance(message, dict) else None
            if request is None:
                self.control({"type": "error", "reason": 'expected {"subscribe": {"topics": [...], ...}}'})
                continue
            try:
                await self._subscribe(Subscribe.model_validate(request))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "subscribe"
                self.control({"type": "refused", "reason": f"{where}: {first['msg']}"})
            except Refused as exc:
                self.control({"type": "refused", "reason": str(exc)})

    async def _subscribe(self, request: Subscribe) -> None:
        topics = selected_topics(request.topics)
        run_id = request.run_id
        if run_id is not None:
            state = await load_run(self.services, run_id)
            if state is None or not self.user.can_see(state.user_id):
                raise Refused(f"run {run_id} not found (or not yours)")
        self._generation += 1  # first: from here on the old subscription's callbacks queue nothing
        await self._unsubscribe()
        self.queue.drop_events()
        bus = self.services.bus
        since = request.since
        if since is None:  # a run from its first event; everything else from now on
            since = 0 if run_id is not None else await bus.last_sequence()
        self._topics = topics
        self.processed = self.last_sent = since
        subject = nats_filter(self.services.subjects, request.topics, run_id)
        self.control(
            {"type": "subscribed", "topics": sorted(topics), "correlationId": request.correlation_id, "since": since}
        )
        try:
            self._sub = await follow(bus, subject, since, self._callback(self._generation))
        except EchelonError as exc:
            raise Refused(f"the event stream is unavailable right now ({exc or type(exc).__name__}); retry") from exc
        log.info("stream.subscribed", subject=subject, correlationId=request.correlation_id, since=since)

    def _callback(self, generation: int) -> Callable[[StoredMsg], Awaitable[None]]:
        async def on_msg(msg: StoredMsg) -> None:
            if generation == self._generation and not self._stop.is_set():
                await self._deliver(msg)

        return on_msg

    async def _deliver(self, msg: StoredMsg) -> None:
        seq = msg.seq
        try:
            frame = await self._frame(msg, seq)
        except Exception as exc:  # e.g. Redis down during an owner lookup: skipping would leave a gap
            log.error("stream.deliver_failed", error=str(exc) or type(exc).__name__, seq=seq)
            self._end(CLOSE_INTERNAL, _json({"resume_since": self.last_sent}))
            return
        if frame is not None:
            before = self.queue.total_dropped
            if not self.queue.offer(frame):
                self._overflow()
            self.services.metrics.ws_dropped.inc(self.queue.total_dropped - before)
        self.processed = seq

    async def _frame(self, msg: StoredMsg, seq: int) -> Frame | None:
        parts = split_subject(self.services.subjects, msg.subject)
        if parts is None or parts[0] not in self._topics:
            return None
        topic, run_id = parts
        try:
            envelope = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return None  # poison is the coordinator's to park, not a client's to see
        if not isinstance(envelope, dict) or envelope.get("topic") != topic:
            return None
        if envelope.get("correlationId") != f"run-{run_id}" or not await self._may_see(topic, run_id, envelope):
            return None
        return Frame(
            data=f'{{"type":"event","seq":{seq},"event":{msg.data.decode()}}}',
            seq=seq,
            progress=topic in PROGRESS_TOPICS,
        )

    async def _may_see(self, topic: str, run_id: str, envelope: dict[str, Any]) -> bool:
        if self.user.is_admin or topic in PUBLIC_TOPICS:
            return True
        if topic == RunRequested.TOPIC:
            payload = envelope.get("payload")
            owner = payload.get("user_id") if isinstance(payload, dict) else None
            if isinstance(owner, str):
                self.owners.learn(run_id, owner)
            return owner == self.user.user_id
        return await self.owners.owner(run_id) == self.user.user_id

    def _overflow(self) -> None:
        discarded = len(self.queue) + 1
        self.services.metrics.ws_dropped.inc(discarded)
        self._end(CLOSE_SLOW_CONSUMER, _json({"resume_since": self.last_sent}))
        log.warning("stream.slow_consumer", resume_since=self.last_sent, discarded=discarded)

    def _end(self, code: int, reason: str) -> None:
        self._close = self._close or (code, reason)
        self._stop.set()

    def control(self, data: dict[str, Any]) -> None:
        if not self.queue.offer(Frame(data=_json(data))):
            self._overflow()

    async def _write(self) -> None:
        while True:
            frame = self.queue.pop()
            if frame is None:
                try:
                    async with asyncio.timeout(self.options.ws_heartbeat_s):
                        await self.queue.ready.wait()
                except TimeoutError:
                    await self.ws.send_text(_json({"type": "heartbeat", "seq": self.processed}))
                continue
            if self.queue.dropped:
                dropped, self.queue.dropped = self.queue.dropped, 0
                await self.ws.send_text(_json({"type": "coalesced", "dropped": dropped}))
            await self.ws.send_text(frame.data)
            if frame.seq is not None:
                self.last_sent = frame.seq

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        await sub.unsubscribe()


class ConnectionCounter:
    """Open stream connections per user in this process (so a crash leaves nothing to clean up)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, user_id: str) -> Iterator[bool]:
        """True (and counted until the block ends) when the user is under the limit; False otherwise."""
        if self._open[user_id] >= self.limit:
            yield False
            return
        self._open[user_id] += 1
        try:
            yield True
        finally:
            self._open[user_id] -= 1
            if not self._open[user_id]:
                del self._open[user_id]


@router.websocket("/api/v1/stream")
async def stream(websocket: WebSocket) -> None:
    app = websocket.app
    settings: Settings = app.state.settings
    services: Services = app.state.services
    options: ApiOptions = app.state.options
    pending: PendingSockets = app.state.ws_pending
    address = websocket.client.host if websocket.client else "unknown"
    await websocket.accept()
    with structlog.contextvars.bound_contextvars(connection_id=str(ULID())):
        with pending.hold(address) as refused:
            if refused is not None:
                log.debug("stream.refused", reason=refused)  # not per attempt at warning: a flood would flood the log
                await _close(websocket, CLOSE_TRY_LATER, refused, options.ws_close_timeout_s)
                return
            user = await _authenticate(websocket, settings, services, options)
        if user is None:
            return
        counter: ConnectionCounter = app.state.ws_connections
        with counter.hold(user.user_id) as admitted:
            if not admitted:
                reason = f"too many connections: at most {counter.limit} per user; close one first"
                await _close(websocket, CLOSE_TOO_MANY, reason, options.ws_close_timeout_s)
                return
            await _serve(websocket, user, services, options, app.state.owners)


async def _authenticate(ws: WebSocket, settings: Settings, services: Services, options: ApiOptions) -> Principal | None:
    """The client's principal, or None when the socket was closed (the reason sent with its close code)."""
    try:
        async with asyncio.timeout(options.ws_auth_timeout_s):
            return await _credentials(ws, settings, services)
    except WebSocketDisconnect:
        return None
    except MessageTooBig as exc:
        await _close(ws, CLOSE_TOO_BIG, str(exc), options.ws_close_timeout_s)
    except (AuthError, TimeoutError) as exc:
        reason = str(exc) if isinstance(exc, AuthError) else "authentication timed out"
        await _close(ws, CLOSE_UNAUTHORIZED, reason, options.ws_close_timeout_s)
    except EchelonError as exc:
        log.error("stream.auth_failed", error=str(exc))
        await _close(ws, CLOSE_INTERNAL, "authentication unavailable; retry", options.ws_close_timeout_s)
    return None


async def _serve(ws: WebSocket, user: Principal, services: Services, options: ApiOptions, owners: OwnerCache) -> None:
    session = StreamSession(ws, user, services, options, owners)
    session.control({"type": "authenticated", "userId": user.user_id, "admin": user.is_admin})
    services.metrics.ws_clients.inc()
    try:
        with structlog.contextvars.bound_contextvars(user_id=user.user_id):
            log.info("stream.connected", admin=user.is_admin)
            await session.run()
            log.info("stream.closed", last_sent=session.last_sent)
    finally:
        services.metrics.ws_clients.dec()
