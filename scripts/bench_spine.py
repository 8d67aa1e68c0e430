"""Benchmark the spine and print JSON.

    python scripts/bench_spine.py [--events 100000] [--seconds 10]

Measures: POST /runs latency (p50/p99) at concurrency 1 and 32 with `wrk` (Debian package `wrk`; a Python
load generator would saturate a core first), the coordinator draining a pre-filled stream (events/s, lag
samples down to zero), a rebuild from the events table (events/s), and JetStream publish cost with and without
fsync-per-write. Uses the configured NATS_URL/DATABASE_URL/REDIS_URL, else embedded servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reuse the test factories
from ulid import ULID

from api.auth import issue_jwt
from coordinator.admission import TrustedKeys
from coordinator.assembly import coordinator_for
from coordinator.rebuild import Rebuilder
from echelon.embedded import EmbeddedNats
from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    ReplayRequested,
    ReplayScored,
    RunIngested,
    RunIngesting,
    Subjects,
    make_event,
)
from scripts.benchlib import isolated, server_env, servers, uvicorn_process, wrk
from tests.factories import record, requested, score

ROOT = Path(__file__).resolve().parent.parent
POST_BODY = json.dumps(
    {
        "repo_url": "https://github.com/acme/widgets",
        "construct_id": "bench",
        "oracle_type": "python",
        "oracle_module": "pipeline_workers.oracles.sample",
        "oracle_callable": "summarise",
        "limit": 10,
    }
)


async def bench_post(settings: Settings, seconds: int) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    port = 18000 + os.getpid() % 1000
    async with uvicorn_process("api.asgi:build_app", port, server_env(settings)) as base:
        token = issue_jwt("bench", settings.jwt_secret.get_secret_value(), ttl_s=3600)
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{base}/api/v1/verification/runs"
        wrk(url, headers, 4, 2, post_json=POST_BODY)  # warm-up
        return {
            "c1": wrk(url, headers, 1, seconds, post_json=POST_BODY),
            "c32": wrk(url, headers, 32, seconds, post_json=POST_BODY),
        }


def synthetic_events(n: int) -> list[Envelope]:
    """Realistic runs: request, ingesting, replays requested+scored, ingested (~500 B-2 KB each)."""
    events: list[Envelope] = []
    while len(events) < n:
        run_id = str(ULID())
        events += [requested(run_id), make_event(RunIngesting(run_id=run_id, source="github"))]
        for i in range(8):
            rid = f"{run_id}-{i:04d}"
            events.append(make_event(ReplayRequested(run_id=run_id, replay_id=rid, index=i, record=record(i))))
            events.append(make_event(ReplayScored(run_id=run_id, replay_id=rid, score=score(rid, i))))
        events.append(
            make_event(RunIngested(run_id=run_id, total=8, ground_truth_source="github", commit_range="a..b"))
        )
    return events[:n]


async def bench_coordinator_and_rebuild(settings: Settings, n: int) -> dict[str, Any]:
    async with Services(settings, name="bench") as services:
        events = synthetic_events(n)
        started = time.perf_counter()
        for i in range(0, n, 2000):
            await services.bus.publish_many(events[i : i + 2000], timeout=60)
        publish_s = time.perf_counter() - started
        lag_samples: list[tuple[float, int]] = []
        async with coordinator_for(services, settings) as coordinator:
            started = time.perf_counter()

            async def sample() -> None:
                while True:
                    lag_samples.append((round(time.perf_counter() - started, 2), coordinator.stats.lag))
                    await asyncio.sleep(1.0)

            sampler = asyncio.create_task(sample())
            stats = await coordinator.run(until_idle=True)
            drain_s = time.perf_counter() - started - settings.fetch_timeout_s  # minus the final empty fetch
            sampler.cancel()
        stored = await services.store.count()
        async with Projector(str(settings.redis_url), settings.redis_prefix) as projector:
            report = await Rebuilder(
                services.store, projector, TrustedKeys.published(services.store, services.settings)
            ).rebuild()
    return {
        "prefill_publish_events_per_s": round(n / publish_s),
        "coordinator": {
            "events": stats.received,
            "events_per_s": round(stats.received / drain_s),
            "batches": stats.batches,
            "final_lag": stats.lag,
            "lag_samples_s_lag": lag_samples,
            "stored_rows": stored,
        },
        "rebuild": {"events": report.events, "runs": report.runs, "events_per_s": round(report.events_per_s)},
    }


async def bench_sync_cost(tmp: Path, n: int = 3000) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for mode in (False, True):
        async with (
            EmbeddedNats(tmp / f"nats-sync-{mode}", sync_always=mode) as server,
            Bus(server.url, stream="SYNC", subjects=Subjects("verify")) as bus,
        ):
            events = synthetic_events(n)
            started = time.perf_counter()
            for e in events[:1000]:
                await bus.publish(e)
            seq_rate = 1000 / (time.perf_counter() - started)
            started = time.perf_counter()
            await bus.publish_many(events[1000:], timeout=60)
            batch_rate = (n - 1000) / (time.perf_counter() - started)
        result["sync_always" if mode else "default_sync"] = {
            "sequential_publish_per_s": round(seq_rate),
            "pipelined_publish_per_s": round(batch_rate),
        }
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--skip-post", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings()
        async with servers(base, Path(tmp)) as (urls, embedded):
            result: dict[str, Any] = {"events": args.events, "nats_sync_always": embedded}
            if not args.skip_post:
                result["post_runs"] = await bench_post(await isolated(base, urls), args.seconds)
            result.update(await bench_coordinator_and_rebuild(await isolated(base, urls), args.events))
            result["jetstream_fsync_cost"] = await bench_sync_cost(Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
