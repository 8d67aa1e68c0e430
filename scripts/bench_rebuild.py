"""Time the writer's automatic rebuild of lost read models, at start-up, from N events in the log.

    python scripts/bench_rebuild.py [--events 100000 1000000]

Seeds the events table directly (as if the log existed and Redis had just restarted empty), then runs
what a starting writer runs — `StateCoordinator.heal()` — and prints JSON with seconds and events/s.
Uses the configured NATS_URL/DATABASE_URL/REDIS_URL, else embedded servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reuse the test factories

from coordinator.assembly import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from scripts.bench_spine import synthetic_events
from scripts.benchlib import isolated, servers

SEED_CHUNK = 5000


async def bench_rebuild(settings: Settings, n: int) -> dict[str, Any]:
    async with Services(settings, name="bench-rebuild", pool_size=4) as services:
        seq = 0
        while seq < n:  # generated chunk by chunk: a million envelopes do not fit comfortably in memory
            chunk = synthetic_events(min(SEED_CHUNK, n - seq))
            await services.store.append_batch([(e, seq + i + 1) for i, e in enumerate(chunk)])
            seq += len(chunk)
        async with coordinator_for(services, settings) as coordinator:
            started = time.perf_counter()
            await coordinator.heal()
            seconds = time.perf_counter() - started
        checkpoint = await coordinator.projector.checkpoint()
    return {
        "events": n,
        "rebuild_seconds": round(seconds, 2),
        "events_per_s": round(n / seconds),
        "checkpoint_seq": checkpoint.seq if checkpoint else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings()
        async with servers(base, Path(tmp)) as (urls, _):
            for n in args.events:
                results.append(await bench_rebuild(await isolated(base, urls), n))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
