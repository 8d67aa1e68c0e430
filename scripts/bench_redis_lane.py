"""Why the API has its own Redis connection for its hot paths: redis-py against the lane, in one run.

    python scripts/bench_redis_lane.py [--calls 20000] [--concurrency 1 32]

Times the GET that GET /runs/{id} makes, through redis-py's asyncio client and through RedisLane
(echelon_platform/adapters/redis_lane.py), on the same Redis, at each concurrency; prints µs of this
process's CPU and wall time per call, and the ratios. Uses REDIS_URL, else an embedded Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from echelon_platform.adapters.redis_lane import RedisLane
from echelon_platform.config import Settings
from scripts.benchlib import servers

KEY = "bench:lane:run"


async def timed(call: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per call, `concurrency` callers sharing `calls`."""

    async def caller(n: int) -> None:
        for _ in range(n):
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
    done = calls // concurrency * concurrency
    return (time.process_time() - cpu) / done * 1e6, (time.perf_counter() - wall) / done * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings(data_dir=Path(tmp))
        async with servers(base, Path(tmp)) as (urls, _):
            client = aioredis.Redis.from_url(urls.redis_url, socket_connect_timeout=5)
            lane = RedisLane(client)
            await client.set(KEY, b"x" * 600)  # about a run record's size
            try:
                for c in args.concurrency:
                    await timed(lambda: lane.call("GET", KEY), 2000, c)  # warm both up
                    await timed(lambda: client.get(KEY), 2000, c)
                    py_cpu, py_wall = await timed(lambda: client.get(KEY), args.calls, c)
                    lane_cpu, lane_wall = await timed(lambda: lane.call("GET", KEY), args.calls, c)
                    print(
                        json.dumps(
                            {
                                "concurrency": c,
                                "redis_py_cpu_us": round(py_cpu, 1),
                                "lane_cpu_us": round(lane_cpu, 1),
                                "redis_py_wall_us": round(py_wall, 1),
                                "lane_wall_us": round(lane_wall, 1),
                                "lane_vs_redis_py_cpu": round(lane_cpu / py_cpu, 3),
                            }
                        ),
                        flush=True,
                    )
            finally:
                await client.delete(KEY)
                await lane.close()
                await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
