"""ASGI entry point for running the API under a process manager:

uvicorn --factory api.asgi:build_app --host 0.0.0.0 --port 8000 --no-access-log --ws-max-size 65536

(`--ws-max-size`: as ECHELON_WS_MAX_MESSAGE_BYTES, which `echelon api` and `stack up` pass to uvicorn.)

(The app writes its own JSON access log line per request, with the request id.)
"""

from __future__ import annotations

from fastapi import FastAPI

from api.app import create_app
from echelon_platform.config import Settings
from echelon_platform.log_config import configure_logging


def build_app() -> FastAPI:
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)
