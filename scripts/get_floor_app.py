"""The floor for GET /runs/{id} benchmarks: a minimal FastAPI app doing one Redis GET and answering its bytes.

    GET /runs/{key}   one `await redis.get(<BENCH_KEY_PREFIX><key>)`, the raw JSON back (404 when absent)

Run by scripts/bench_get_side.sh next to the project's `GET /api/v1/verification/runs/{id}`, which in addition
authenticates, resolves the read-model namespace, checks ownership and serialises the public view.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, Response

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
KEY_PREFIX = os.environ.get("BENCH_KEY_PREFIX", "")
state: dict[str, aioredis.Redis] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state["redis"] = aioredis.Redis.from_url(REDIS_URL)
    yield
    await state["redis"].aclose()


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/runs/{key}")
async def get_run(key: str) -> Response:
    raw = await state["redis"].get(KEY_PREFIX + key)
    if raw is None:
        return Response(b'{"detail":"not found"}', status_code=404, media_type="application/json")
    return Response(raw, media_type="application/json")
