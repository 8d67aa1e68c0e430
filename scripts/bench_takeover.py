"""Benchmark writer takeover: kill -9 the leading coordinator, again and again, and print JSON.

    python scripts/bench_takeover.py [--rounds 20] [--processes 3]

Runs `echelon coordinator` processes against one stream while events are published steadily. Each round
SIGKILLs the leader (found through writer_lease.holder) and measures the time to the standby's epoch
bump and to the first event the new leader appends, then restarts the killed process as a supervisor
would. At the end, checks that every published event was appended once. Uses the configured
NATS_URL/DATABASE_URL/REDIS_URL, else embedded servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reuse the test factories
import asyncpg

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from scripts.benchlib import ROOT, isolated, server_env, servers
from tests.factories import requested

_CONTENDERS = (
    "SELECT count(*) = $1 FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name = 'echelon-writer:verify'"
)
COORDINATOR = [sys.executable, "-c", "from echelon.cli import main; main(['coordinator'])"]


def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        COORDINATOR, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def poll(probe: Any, timeout: float, interval: float = 0.01) -> float:
    """Seconds until `probe()` is truthy (raises at the deadline)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await probe():
            return time.monotonic() - started
        await asyncio.sleep(interval)
    raise TimeoutError(f"nothing after {timeout}s")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 1)


async def bench(settings: Settings, rounds: int, processes: int, rate: float) -> dict[str, Any]:
    env = server_env(settings)
    db = await asyncpg.connect(settings.database_url)
    published = 0
    stop = asyncio.Event()
    procs: list[subprocess.Popen[bytes]] = []

    async def all_connected() -> bool:
        """Every process is up and contending (a standby holds its lease connection while it waits)."""
        return bool(await db.fetchval(_CONTENDERS, processes))

    async def lease() -> asyncpg.Record | None:
        return await db.fetchrow("SELECT epoch, holder FROM writer_lease WHERE partition = $1", "verify")

    async with Services(settings, name="bench-takeover") as services:

        async def publisher() -> None:
            nonlocal published
            while not stop.is_set():
                await services.bus.publish(requested(f"TK{published:06d}"))
                published += 1
                await asyncio.sleep(1 / rate)

        procs = [start(env) for _ in range(processes)]
        feeding = asyncio.create_task(publisher())
        to_epoch: list[float] = []
        to_append: list[float] = []
        restart_to_standby: list[float] = []
        try:
            await poll(all_connected, 120, 0.1)
            await poll(lambda: db.fetchval("SELECT count(*) > 0 FROM events"), 30)
            for _ in range(rounds):
                row = await lease()
                assert row is not None
                epoch, pid = row["epoch"], int(row["holder"].split(":")[1])
                victim = next(i for i, p in enumerate(procs) if p.pid == pid)
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()

                async def bumped(e: int = epoch) -> bool:
                    r = await lease()
                    return r is not None and r["epoch"] > e

                await poll(bumped, 30)
                to_epoch.append(time.monotonic() - killed)
                high = await db.fetchval("SELECT coalesce(max(seq), 0) FROM events")  # nothing newer yet
                await poll(lambda h=high: db.fetchval("SELECT max(seq) > $1 FROM events", h), 30)
                to_append.append(time.monotonic() - killed)
                procs[victim].wait()
                procs[victim] = start(env)  # the supervisor's restart; measured rounds need it ready
                restart_to_standby.append(await poll(all_connected, 120, 0.05))
        finally:
            stop.set()
            await feeding
        # The dead leaders' in-flight batches come back after ack_wait; then every event is there once.
        with contextlib.suppress(TimeoutError):
            await poll(lambda: db.fetchval("SELECT count(*) >= $1 FROM events", published), 60, 0.2)
        stored = await db.fetchval("SELECT count(*) FROM events")
        inversions = await db.fetchval(
            "SELECT count(*) FROM (SELECT stream_seq < lag(stream_seq) OVER (ORDER BY seq) AS inv FROM events) t "
            "WHERE inv"
        )
        for p in procs:
            p.send_signal(signal.SIGTERM)
        exit_codes = [p.wait(30) for p in procs]
    await db.close()
    return {
        "rounds": rounds,
        "processes": processes,
        "publish_rate_per_s": rate,
        "kill_to_new_epoch_ms": {"p50": pct(to_epoch, 0.5), "p99": pct(to_epoch, 0.99), "max": pct(to_epoch, 1)},
        "kill_to_first_append_ms": {
            "p50": pct(to_append, 0.5),
            "p99": pct(to_append, 0.99),
            "max": pct(to_append, 1),
            "mean": round(statistics.mean(to_append) * 1000, 1),
        },
        "restart_to_standby_ms": {"p50": pct(restart_to_standby, 0.5), "max": pct(restart_to_standby, 1)},
        "published": published,
        "stored": stored,
        "stream_order_inversions": inversions,
        "exit_codes_after_sigterm": exit_codes,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="events published per second meanwhile")
    parser.add_argument("--ack-wait", type=float, default=5.0, help="when a dead leader's batch comes back")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings()
        async with servers(base, Path(tmp)) as (urls, _):
            settings = (await isolated(base, urls)).model_copy(
                update={"ack_wait_s": args.ack_wait, "fetch_timeout_s": 0.2, "data_dir": Path(tmp)}
            )
            result = await bench(settings, args.rounds, args.processes, args.rate)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
