"""Benchmark the API's stream and read paths and print JSON.

    python scripts/bench_api.py [--clients 100] [--rate 1000] [--seconds 10]

1. Event → WebSocket client latency: `--clients` users each watch their own run on `GET /api/v1/stream`
   (a correlationId subscription, as the frontend does) while events of those runs are published at
   `--rate` events/s in total. Latency = client receive time − envelope timestamp (taken at publish).
   For comparison, in the same run, a bare nats-py ordered consumer in this process measures
   publish → NATS delivery for the same events (the floor under the stream's figure).
2. GET /runs/{id}: p50/p99 with `wrk` at c=1 and c=32, and the same for a minimal FastAPI app doing one
   Redis GET per request under the same uvicorn (the ceiling this route can approach).

The API runs as deployed: its own uvicorn process (uvloop + httptools, JSON logs at INFO to /dev/null). The
coordinator, the publisher and the WebSocket clients share this process, and all of it shares the 2 cores.
Uses the configured NATS_URL/DATABASE_URL/REDIS_URL, else embedded servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reuse the test factories
from nats.js.api import DeliverPolicy
from ulid import ULID
from websockets.asyncio.client import connect

from api.auth import issue_jwt
from coordinator.assembly import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import ReplayRequested, make_event
from scripts.benchlib import isolated, server_env, servers, uvicorn_process, wrk
from tests.factories import record, requested

ROOT = Path(__file__).resolve().parent.parent


def note(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def summary(latencies_ms: list[float], expected: int) -> dict[str, Any]:
    return {
        "received": len(latencies_ms),
        "expected": expected,
        "p50_ms": pct(latencies_ms, 0.50),
        "p99_ms": pct(latencies_ms, 0.99),
        "max_ms": round(max(latencies_ms), 3) if latencies_ms else None,
        "mean_ms": round(statistics.fmean(latencies_ms), 3) if latencies_ms else None,
    }


def ceiling_app() -> Any:
    """The floor-to-beat for GET /runs/{id}: one Redis GET and the raw bytes back, nothing else."""
    import redis.asyncio as aioredis
    from fastapi import FastAPI, Response

    redis = aioredis.Redis.from_url(os.environ["ECHELON_REDIS_URL"])
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/raw/{key}")
    async def raw(key: str) -> Response:
        return Response(await redis.get(key) or b"{}", media_type="application/json")

    return app


class Client:
    """One user watching their run; records receive latency per event frame."""

    def __init__(self, url: str, token: str, run_id: str) -> None:
        self.url, self.token, self.run_id = url, token, run_id
        self.latencies: list[float] = []
        self.seen = 0
        self.closed: str | None = None

    async def run(self, ready: asyncio.Event, measuring: asyncio.Event) -> None:
        async with connect(self.url, max_size=2**22) as ws:
            await ws.send(orjson.dumps({"token": self.token}).decode())  # never in the URL
            assert orjson.loads(await ws.recv())["type"] == "authenticated"
            request = {"topics": ["verify.>"], "correlationId": f"run-{self.run_id}"}
            await ws.send(orjson.dumps({"subscribe": request}).decode())
            assert orjson.loads(await ws.recv())["type"] == "subscribed"
            ready.set()
            try:
                async for raw in ws:
                    now = time.time()
                    frame = orjson.loads(raw)
                    if frame["type"] != "event":
                        continue
                    self.seen += 1
                    if measuring.is_set():
                        sent = datetime.fromisoformat(frame["event"]["timestamp"]).timestamp()
                        self.latencies.append((now - sent) * 1000)
            except Exception as exc:  # a close is a result to report, not a crash of the benchmark
                self.closed = f"{type(exc).__name__}: {exc}"


async def publish_at_rate(services: Services, run_ids: list[str], rate: int, seconds: float) -> int:
    """Round-robin replay events over the runs, `rate` per second, in 10 ms ticks (pipelined per tick)."""
    sent, started, phase = 0, time.perf_counter(), str(ULID())[-8:]  # unique ids: no dedup across phases
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(elapsed * rate) - sent
        batch = []
        for k in range(sent, sent + due):
            run_id = run_ids[k % len(run_ids)]
            rid = f"{run_id}-{phase}-{k:07d}"
            batch.append(make_event(ReplayRequested(run_id=run_id, replay_id=rid, index=k, record=record(k % 50))))
        if batch:
            await services.bus.publish_many(batch)
            sent += len(batch)
        await asyncio.sleep(0.01)
    return sent


async def bench_stream(settings: Settings, services: Services, api: str, args: argparse.Namespace) -> dict[str, Any]:
    run_ids = [f"BENCH{i:04d}{str(ULID())[-6:]}" for i in range(args.clients)]
    await services.bus.publish_many([requested(r, f"user{i}", "bench") for i, r in enumerate(run_ids)])
    secret = settings.jwt_secret.get_secret_value()
    ws_base = api.replace("http://", "ws://")
    clients = [Client(f"{ws_base}/api/v1/stream", issue_jwt(f"user{i}", secret), r) for i, r in enumerate(run_ids)]
    measuring = asyncio.Event()
    readies = [asyncio.Event() for _ in clients]
    tasks = [asyncio.create_task(c.run(e, measuring)) for c, e in zip(clients, readies, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies)), 60)
    note(f"{len(clients)} clients subscribed")

    # The floor: a bare ordered consumer in this process, on the same events.
    direct: list[float] = []

    async def on_direct(msg: Any) -> None:
        if measuring.is_set():
            ts = orjson.loads(msg.data)["timestamp"]
            direct.append((time.time() - datetime.fromisoformat(ts).timestamp()) * 1000)

    last = await services.bus.last_sequence()
    direct_sub = await services.bus.js.subscribe(
        services.subjects.topic_filter("verify.replay.requested"), cb=on_direct, stream=services.bus.stream,
        ordered_consumer=True, deliver_policy=DeliverPolicy.NEW,
    )  # fmt: skip
    await publish_at_rate(services, run_ids, args.rate, 1.0)  # warm-up: consumers live, owner cache filled
    await asyncio.wait_for(_settled(clients), 30)
    note("warm-up done; measuring")
    seen_before = sum(c.seen for c in clients)
    measuring.set()
    sent = await publish_at_rate(services, run_ids, args.rate, args.seconds)
    with contextlib.suppress(TimeoutError):  # reported as received < expected
        await asyncio.wait_for(_all_seen(clients, seen_before + sent), 30)
    measuring.clear()
    note(f"published {sent}; clients saw {sum(c.seen for c in clients) - seen_before}")
    await direct_sub.unsubscribe()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [x for c in clients for x in c.latencies]
    return {
        "clients": args.clients,
        "rate_events_per_s": args.rate,
        "seconds": args.seconds,
        "stream_seq_at_start": last,
        "websocket": summary(latencies, sent),
        "nats_direct_floor": summary(direct, sent),
        "clients_closed": [c.closed for c in clients if c.closed][:3],
    }


async def _settled(clients: list[Client]) -> None:
    previous = -1
    while (now := sum(c.seen for c in clients)) != previous or now == 0:
        previous = now
        await asyncio.sleep(0.5)


async def _all_seen(clients: list[Client], total: int) -> None:
    while sum(c.seen for c in clients) < total:  # noqa: ASYNC110 - polling counters, not waiting on one event
        await asyncio.sleep(0.05)


async def bench_get(settings: Settings, services: Services, api: str, seconds: int) -> dict[str, Any]:
    run_id = "BENCHGET"
    await services.bus.publish(requested(run_id, "getter", "bench"))
    async with coordinator_for(services, settings) as coordinator:
        await coordinator.run(until_idle=True)
    headers = {"Authorization": f"Bearer {issue_jwt('getter', settings.jwt_secret.get_secret_value())}"}
    url = f"{api}/api/v1/verification/runs/{run_id}"
    async with httpx.AsyncClient() as client:
        assert (await client.get(url, headers=headers)).status_code == 200
    keys = await services.read_models.keys()
    env = {**os.environ, "ECHELON_REDIS_URL": str(settings.redis_url)}
    result: dict[str, Any] = {}
    async with uvicorn_process("bench_api:ceiling_app", 18000 + os.getpid() % 1000 + 1, env) as ceiling:
        raw_url = f"{ceiling}/raw/{keys.run(run_id)}"
        wrk(url, headers, 4, 2)  # warm-up
        for c in (1, 32):
            result[f"c{c}"] = {
                "api": await asyncio.to_thread(wrk, url, headers, c, seconds),
                "ceiling_one_redis_get": await asyncio.to_thread(wrk, raw_url, {}, c, seconds),
            }
            api_p50, floor_p50 = result[f"c{c}"]["api"]["p50_ms"], result[f"c{c}"]["ceiling_one_redis_get"]["p50_ms"]
            result[f"c{c}"]["p50_ratio_to_ceiling"] = round(api_p50 / floor_p50, 2)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--no-coordinator", action="store_true", help="do not project events while streaming")
    parser.add_argument("--no-fsync", action="store_true", help="embedded NATS without fsync per write")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the GET benchmark (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings()
        async with servers(base, Path(tmp), sync_always=not args.no_fsync) as (urls, embedded):
            settings = await isolated(base, urls)
            result: dict[str, Any] = {
                "nats_sync_always": embedded and not args.no_fsync,
                "cpus": os.cpu_count(),
            }
            async with Services(settings, name="bench-api") as services:
                port = 18000 + os.getpid() % 1000
                async with uvicorn_process("api.asgi:build_app", port, server_env(settings)) as api:
                    async with coordinator_for(services, settings) as coordinator:
                        projecting = None if args.no_coordinator else asyncio.create_task(coordinator.run())
                        result["stream"] = await bench_stream(settings, services, api, args)
                        result["stream"]["coordinator_running"] = projecting is not None
                        if projecting is not None:
                            coordinator.stop()
                            await projecting
                    result["get_run"] = await bench_get(settings, services, api, args.seconds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
