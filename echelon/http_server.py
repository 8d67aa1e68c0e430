"""The API's uvicorn configuration, shared by `echelon api` and `echelon stack up`.

uvicorn believes `X-Forwarded-For` from loopback by default (its `forwarded_allow_ips` is 127.0.0.1): any
client on this machine, or any proxy in front that passes the header through, could then pick the address
the per-address limits (`/auth/nonce`, `/auth/session`) count. Forwarded headers are honoured only from
`ECHELON_TRUSTED_PROXIES` (default: none, and then uvicorn's proxy handling is off altogether).
"""

from __future__ import annotations

from typing import Any

import uvicorn

from echelon_platform.config import Settings


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for forwarded headers (see the module doc)."""
    trusted = list(settings.trusted_proxies)
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted}


def api_server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    # ws_max_size: no WebSocket message is read whole past ECHELON_WS_MAX_MESSAGE_BYTES (uvicorn closes 1009).
    return uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        ws_max_size=settings.ws_max_message_bytes,
        **proxy_options(settings),
        **options,
    )
