"""A rebuild side by side with its floor, in one run, on the same Postgres and Redis; prints JSON.

    python scripts/bench_rebuild_floor.py [--events 100000 1000000] [--no-verify]

For each N: seeds N realistic events into the log (as bench_rebuild.py), then times
  floor    read every row (server cursor: seq, time, topic, run, and only the payload fields a fold uses),
           fold in memory (a dict per run), write each run's key once (pipelined SET): the least any
           rebuild does
  rebuild  `Rebuilder.rebuild()`, what `echelon rebuild` and the writer's automatic rebuild run, up to the
           namespace switch
  verify   `echelon rebuild --verify`: a rebuild into a scratch namespace compared key by key with the live one
and reports events/s and the ratio to the floor. Uses the configured NATS_URL/DATABASE_URL/REDIS_URL, else
embedded servers.
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

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reuse the test factories

from coordinator.admission import TrustedKeys
from coordinator.rebuild import READ_BATCH, Rebuilder, delete_namespace, verify
from coordinator.rebuild_fold import PAYLOAD_TOPICS
from echelon_platform.adapters.readmodel_store import Keys
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from scripts.bench_spine import synthetic_events
from scripts.benchlib import isolated, servers

SEED_CHUNK = 5000


async def seed(services: Services, n: int) -> None:
    seq = 0
    while seq < n:  # chunk by chunk: a million envelopes do not fit comfortably in memory
        chunk = synthetic_events(min(SEED_CHUNK, n - seq))
        await services.store.append_batch([(e, seq + i + 1) for i, e in enumerate(chunk)])
        seq += len(chunk)


# What any fold of these read models must read: each row's position, time, topic and run, and the payload
# fields the fold uses (all of a run request's, a replay's id), extracted by Postgres.
_FLOOR_QUERY = """
SELECT seq, time, topic, correlation_id,
       CASE WHEN topic IN ('verify.replay.scored', 'verify.replay.failed') THEN payload->>'replay_id'
            WHEN topic = ANY($1::text[]) THEN payload::text END
FROM events ORDER BY seq
"""


async def floor(services: Services, prefix: str) -> tuple[int, float]:
    """Read + fold in memory + write each key once: the floor under any rebuild of these read models.

    Reads only what a fold needs, with the next batch requested before this one is folded (Postgres and
    Python overlap, as in `stream_rows`); folds into a dict per run; one pipelined SET per run."""
    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    rows = 0
    async with services.store.pool.acquire() as conn, conn.transaction(readonly=True):
        cursor = await conn.cursor(_FLOOR_QUERY, list(PAYLOAD_TOPICS))
        pending = asyncio.ensure_future(cursor.fetch(READ_BATCH))
        while batch := await pending:
            pending = asyncio.ensure_future(cursor.fetch(READ_BATCH))
            for seq, at, topic, correlation_id, payload in batch:
                state = runs.get(correlation_id)
                if state is None:
                    state = runs[correlation_id] = {"n": 0}
                state["n"] += 1
                state["last"] = (seq, topic, at, payload)
            rows += len(batch)
    redis = services.read_models.redis
    items = list(runs.items())
    for i in range(0, len(items), 1000):
        pipe = redis.pipeline(transaction=False)
        for run, state in items[i : i + 1000]:
            pipe.set(f"{prefix}floor:{run}", orjson.dumps(state))
        await pipe.execute()
    seconds = time.perf_counter() - started
    batch_keys: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}floor:*", count=5000):
        batch_keys.append(key)
    for i in range(0, len(batch_keys), 1000):
        await redis.unlink(*batch_keys[i : i + 1000])
    return rows, seconds


async def bench(settings: Settings, n: int, with_verify: bool) -> dict[str, Any]:
    async with (
        Services(settings, name="bench-rebuild", pool_size=4) as services,
        Projector(str(settings.redis_url), settings.redis_prefix) as projector,
    ):
        await seed(services, n)
        # Sets the rows' hint bits now: else whichever phase reads first pays for writing them.
        await services.store.pool.execute("VACUUM ANALYZE events")
        rows, floor_s = await floor(services, settings.redis_prefix)
        report = await Rebuilder(
            services.store, projector, TrustedKeys.published(services.store, services.settings)
        ).rebuild()
        result: dict[str, Any] = {
            "events": n,
            "floor_rows_per_s": round(rows / floor_s),
            "rebuild_seconds": round(report.seconds, 2),
            "rebuild_events_per_s": round(report.events_per_s),
            "rebuild_vs_floor": round(report.events_per_s / (rows / floor_s), 2),
        }
        if with_verify:
            started = time.perf_counter()
            checked = await verify(services.store, projector, services.settings)
            seconds = time.perf_counter() - started
            result.update(
                verify_seconds=round(seconds, 2),
                verify_rebuild_events_per_s=round(checked.events_per_s),
                verify_differences=len(checked.differences),
            )
        await delete_namespace(projector, Keys(settings.redis_prefix, report.namespace))
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--no-verify", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings()
        async with servers(base, Path(tmp)) as (urls, _):
            for n in args.events:
                results.append(await bench(await isolated(base, urls), n, not args.no_verify))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
