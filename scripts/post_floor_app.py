"""The floor for POST /runs benchmarks: a minimal FastAPI app doing only what any POST /runs must do.

    POST /events   FastAPI body param (pydantic validation) + envelope (ULID, time, orjson) +
                   `await js.publish(...)` (waits for JetStream's ack, Nats-Msg-Id header) -> 201 {event_id, seq}

Run by scripts/bench_post_side.sh next to the project's `POST /api/v1/verification/runs`, which in addition
authenticates, rate-limits, checks the construct's owner, stores secrets, logs and measures.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import nats.js.errors
import orjson
from fastapi import FastAPI
from nats.js.api import StorageType, StreamConfig
from pydantic import BaseModel, Field
from ulid import ULID

NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
STREAM, SUBJECT = "POSTFLOOR", "postfloor.ev"
state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    try:
        await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            StreamConfig(name=STREAM, subjects=["postfloor.>"], storage=StorageType.FILE, duplicate_window=120.0)
        )
    state["js"] = js
    yield
    await nc.close()


app = FastAPI(lifespan=lifespan)  # responses serialised by pydantic through the return type (FastAPI's fast path)


class EventIn(BaseModel):
    topic: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any]
    correlation_id: str | None = Field(default=None, max_length=64)
    causation_id: str | None = Field(default=None, max_length=64)


class EventOut(BaseModel):
    event_id: str
    seq: int


def envelope(body: EventIn) -> tuple[str, bytes]:
    eid = str(ULID())
    env = {
        "event_id": eid,
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "topic": body.topic,
        "correlation_id": body.correlation_id or eid,
        "causation_id": body.causation_id or eid,
        "version": 1,
        "payload": body.payload,
    }
    return eid, orjson.dumps(env)


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/events", status_code=201)
async def post_event(body: EventIn) -> EventOut:
    eid, data = envelope(body)
    ack = await state["js"].publish(SUBJECT, data, headers={"Nats-Msg-Id": eid})
    return EventOut(event_id=eid, seq=ack.seq)
