"""Browser apps on other origins: one origin policy for HTTP (CORS, preflight included) and WebSockets.

`ECHELON_CORS_ORIGINS` lists the allowed origins (`*` for any). Unset, a loopback API (the dev stack) allows
`http://localhost:*` and `http://127.0.0.1:*`, and any other API allows none: a browser page on another
origin cannot read its answers. Requests without an `Origin` header (the CLI, curl, services) are not
affected. Credentials travel in the `Authorization` header, never in cookies, so no cookie is ever shared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from echelon_platform.config import Settings

# Any port of the loopback names a developer's own page server uses.
DEV_ORIGIN_PATTERN = r"^http://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?$"
# What a browser app sends besides the CORS-safelisted headers (preflight asks for these).
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "X-Request-ID",
    "X-Wallet-Address",
    "X-Wallet-Message",
    "X-Wallet-Signature",
)
# What a browser app may read from an answer besides the safelisted ones.
EXPOSED_HEADERS = ("X-Request-ID", "Retry-After", "Location")
PREFLIGHT_MAX_AGE_S = 600


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    origins: frozenset[str]
    pattern: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> OriginPolicy:
        if settings.cors_origins is not None:
            return cls(frozenset(o.rstrip("/") for o in settings.cors_origins))
        return cls(frozenset(), DEV_ORIGIN_PATTERN if settings.api_is_loopback() else None)

    @property
    def any_origin(self) -> bool:
        return "*" in self.origins

    def allows(self, origin: str) -> bool:
        if self.any_origin or origin in self.origins:
            return True
        return self.pattern is not None and re.fullmatch(self.pattern, origin) is not None


class WebSocketOrigin:
    """Refuse (HTTP 403 before the handshake completes) a WebSocket opened by a page of a foreign origin.

    Browsers do not apply CORS to WebSockets, so without this a page anywhere could open the stream with a
    token it holds; the same list as HTTP decides. Same-origin pages (the dashboard) are always allowed."""

    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            origin = _header(scope, b"origin")
            if origin is not None and not _same_origin(scope, origin) and not self.policy.allows(origin):
                await send({"type": "websocket.close", "code": 1008, "reason": "origin not allowed"})
                return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _same_origin(scope: Scope, origin: str) -> bool:
    host = _header(scope, b"host")
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    return host is not None and origin == f"{scheme}://{host}"


def install_cors(app: FastAPI, settings: Settings) -> OriginPolicy:
    policy = OriginPolicy.from_settings(settings)
    app.add_middleware(WebSocketOrigin, policy=policy)
    if policy.origins or policy.pattern:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"] if policy.any_origin else sorted(policy.origins),
            allow_origin_regex=policy.pattern,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=list(ALLOWED_HEADERS),
            expose_headers=list(EXPOSED_HEADERS),
            max_age=PREFLIGHT_MAX_AGE_S,
        )
    return policy
