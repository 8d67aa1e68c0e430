"""ASGI entry point for running the API under a process manager:

    uvicorn --factory echelon_platform.api.asgi:build_app --host 0.0.0.0 --port 8000
"""

from __future__ import annotations

from fastapi import FastAPI

from echelon_platform.api.app import create_app
from echelon_platform.config import Settings


def build_app() -> FastAPI:
    return create_app(Settings())
