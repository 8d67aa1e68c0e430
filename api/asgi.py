"""ASGI entry point for running the API under a process manager:

uvicorn --factory api.asgi:build_app --host 0.0.0.0 --port 8000 --no-access-log --no-proxy-headers --ws-max-size 65536

(`--ws-max-size`: as ECHELON_WS_MAX_MESSAGE_BYTES, which `echelon api` and `stack up` pass to uvicorn.)

(The app writes its own JSON access log line per request, with the request id.) Behind a reverse proxy,
replace `--no-proxy-headers` by `--forwarded-allow-ips` with the proxies' addresses (what
ECHELON_TRUSTED_PROXIES says for `echelon api`): uvicorn's own default believes X-Forwarded-For from
loopback, which lets a local client choose the address per-address rate limits count.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.app import create_app
from echelon_platform.config import Settings
from echelon_platform.log_config import configure_logging
from echelon_platform.recursion import check_recursion_limit


def build_app() -> FastAPI:
    check_recursion_limit()  # the app's imports are done: none of them may have raised it
    settings = Settings()
    configure_logging(settings.log_level, batched=True)
    return create_app(settings)
