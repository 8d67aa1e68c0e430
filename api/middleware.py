"""Per-request context as plain ASGI middleware (no BaseHTTPMiddleware: it costs a task per request).

Honours a sane incoming `X-Request-ID` (else makes one), returns it, binds it to every log line of the
request, records the latency histogram per route template, and writes one JSON access-log line.
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from ulid import ULID

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = structlog.get_logger("api.access")


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            # Echoed into logs and headers: anything odd is replaced rather than trusted.
            return text if _REQUEST_ID.match(text) else str(ULID())
    return str(ULID())


def route_label(scope: Scope) -> str:
    """The route template (bounded label cardinality). FastAPI records only its own routes in the scope;
    the docs routes it adds (/openapi.json, /docs) are static, so their path is their template."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    return str(scope["path"]) if "endpoint" in scope else "unmatched"


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Histogram children by (histogram, method, route, status): `labels()` takes a lock and builds a
        # key on every call; the label sets are few and bounded (route templates), so keep them.
        self._children: dict[tuple[Any, str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                route = route_label(scope)
                services = getattr(scope["app"].state, "services", None)
                if services is not None:
                    self._latency(services.metrics.http_latency, scope["method"], route, status).observe(elapsed)
                log.info(
                    "http.request",
                    method=scope["method"],
                    path=scope["path"],
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                )

    def _latency(self, histogram: Any, method: str, route: str, status: int) -> Any:
        key = (histogram, method, route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = histogram.labels(method, route, str(status))
        return child
