"""Browser apps on other origins: one origin policy for HTTP (CORS, preflight included) and WebSockets,
applied by the API's edge layer (api/edge.py).

`ECHELON_CORS_ORIGINS` lists the allowed origins (`*` for any). Unset, a loopback API (the dev stack) allows
`http://localhost:*` and `http://127.0.0.1:*`, and any other API allows none: a browser page on another
origin cannot read its answers. Requests without an `Origin` header (the CLI, curl, services) are not
affected. Credentials travel in the `Authorization` header, never in cookies, so no cookie is ever shared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.types import Scope

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


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def same_origin(scope: Scope, origin: str) -> bool:
    host = _header(scope, b"host")
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    return host is not None and origin == f"{scheme}://{host}"
