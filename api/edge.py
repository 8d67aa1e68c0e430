"""The API's one ASGI layer around the app: everything every request needs before a route sees it.

In order, in one pass over the headers:
- the request id (a sane incoming `X-Request-ID`, else a new one), returned and bound to every log line;
- the WebSocket origin check (browsers do not apply CORS to WebSockets, api/cors.py);
- CORS, only for a request that sends `Origin` (the CLI, curl and services never pay for it);
- the body size limit: a declared `Content-Length` over it gets 413 before anything is read, a chunked body
  is refused at the first byte over it;
- strict, shallow JSON (api/json_body.py): a JSON body is read whole, checked once with orjson and handed to
  the route both as bytes and, decoded, in the scope (`parsed_json`), so a route need not decode it again;
  a direct route (api/direct.py: POST /runs) gets it here, past the framework's own layers;
- one access-log line (with the fields a route notes on it: api/access_log.py) and the latency histogram
  per route template.

One layer instead of four stacked middlewares: each layer wrapped `send` (and `receive`) again and scanned
the headers again, a cost every request paid (the POST /runs profile in docs/benchmarks.md).
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.access_log import ACCESS_FIELDS
from api.cors import ALLOWED_HEADERS, EXPOSED_HEADERS, PREFLIGHT_MAX_AGE_S, OriginPolicy, same_origin
from api.direct import DirectRoutes
from api.json_body import MAX_JSON_DEPTH, BodyRejected, check_json_body, declares_json
from echelon_platform.domain.ids import new_ulid

log = structlog.get_logger("api.access")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
PARSED_JSON = "echelon.parsed_json"  # scope key: the request's JSON body, decoded once here


def sane_request_id(value: bytes) -> str:
    """An incoming `X-Request-ID`, echoed into logs and headers: anything odd is replaced, not trusted."""
    return value.decode("latin-1") if _REQUEST_ID.fullmatch(value) else new_ulid()


def route_label(scope: Scope) -> str:
    """The route template (bounded label cardinality). FastAPI records only its own routes in the scope;
    the docs routes it adds (/openapi.json, /docs) are static, so their path is their template."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    return str(scope["path"]) if "endpoint" in scope else "unmatched"


async def send_detail(send: Send, status: int, detail: str) -> None:
    """Answer `{"detail": ...}` from outside any route."""
    body = orjson.dumps({"detail": detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class Edge:
    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: OriginPolicy,
        max_bytes: int,
        max_depth: int = MAX_JSON_DEPTH,
        direct: DirectRoutes | None = None,
    ) -> None:
        self.app = app
        self.direct = direct
        if direct is not None:  # built here, when the app builds its own stack: the same exception handlers
            direct.build()
        self.policy = policy
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self._cors: ASGIApp | None = None
        if policy.origins or policy.pattern:
            self._cors = CORSMiddleware(
                self._checked_body,
                allow_origins=["*"] if policy.any_origin else sorted(policy.origins),
                allow_origin_regex=policy.pattern,
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                allow_headers=list(ALLOWED_HEADERS),
                expose_headers=list(EXPOSED_HEADERS),
                max_age=PREFLIGHT_MAX_AGE_S,
            )
        # Histogram children by (histogram, method, route, status): `labels()` takes a lock and builds a key
        # on every call; the label sets are few and bounded (route templates), so keep them.
        self._children: dict[tuple[Any, str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        request_id: str | None = None
        origin: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = sane_request_id(value)
            elif name == b"origin":
                origin = value
        if request_id is None:
            request_id = new_ulid()
        header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        noted: dict[str, Any] = {}
        fields_token = ACCESS_FIELDS.set(noted)
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                if origin is not None and self._cors is not None:
                    await self._cors(scope, receive, send_with_id)
                else:
                    await self._checked_body(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                route = route_label(scope)
                services = getattr(scope["app"].state, "services", None) if "app" in scope else None
                if services is not None:
                    self._latency(services.metrics.http_latency, scope["method"], route, status).observe(elapsed)
                log.info(
                    "http.request",
                    method=scope["method"],
                    path=scope["path"],
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                    **noted,
                )
                ACCESS_FIELDS.reset(fields_token)

    async def _checked_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The size limit and the JSON check, then the app (inside CORS, so refusals carry its headers)."""
        declared: bytes | None = None
        content_type: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"content-type":
                content_type = value
        if declared is not None:
            text = declared.decode("latin-1").strip()
            if text.isdigit() and int(text) > self.max_bytes:
                await send_detail(send, 413, BodyTooLarge(self.max_bytes).detail)
                return
        if scope["method"] in _BODY_METHODS and declares_json(content_type):
            body = await self._read_body(receive, send)
            if body is None:
                return  # answered (413) or the client left
            if body:
                try:
                    scope[PARSED_JSON] = check_json_body(body, self.max_depth)
                except BodyRejected as exc:
                    await send_detail(send, 422, str(exc))
                    return
            direct = self.direct.app_for(scope) if self.direct is not None else None
            await (self.app if direct is None else direct)(scope, _replay(body, receive), send)
            return
        await self._counted(scope, receive, send)

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client left before sending the whole body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_detail(send, 413, BodyTooLarge(self.max_bytes).detail)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Any other body: counted as the app reads it, refused at the first byte over the limit."""
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes an HTTPException raised while reading the body on to the app's handler.
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # raised outside a FastAPI route (nothing answered yet)
            if started:
                raise
            await send_detail(send, 413, exc.detail)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse (403 before the handshake completes) a WebSocket opened by a page of a foreign origin; the
        same list as HTTP decides, and same-origin pages (the dashboard) are always allowed."""
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
                if not same_origin(scope, origin) and not self.policy.allows(origin):
                    await send({"type": "websocket.close", "code": 1008, "reason": "origin not allowed"})
                    return
                break
        await self.app(scope, receive, send)

    def _latency(self, histogram: Any, method: str, route: str, status: int) -> Any:
        key = (histogram, method, route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = histogram.labels(method, route, str(status))
        return child


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, handed to the app as one message; then the real channel (a disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
