"""`GET /stats` at 20,000 runs next to the same query at 100 runs, in one run; prints JSON.

    python scripts/bench_stats.py [--runs 20000] [--small 100] [--seconds 5]

Two isolated read-model sets are seeded through the coordinator's own projection (`Projector.project`, in
batches of 256): `--runs` runs (a quarter certified, with a logged judge call and a rating each; the rest
failed or still running) over 200 constructs and two judge models, and `--small` runs of the same mix. Each
set is served by its own `echelon` API process (uvicorn, as deployed, the /stats rate limit lifted), and
`wrk` measures anonymous `/stats` (both groupings) at c=1 and c=8, the sets alternating, three rounds. The
ratio large/small of p99 is the figure that matters: the projected aggregates make it independent of the
number of runs. For comparison, the scan `/stats` did before (`api/stats_scan.py`) is timed in-process on
both sets. Uses the configured NATS_URL/DATABASE_URL/REDIS_URL, else embedded servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reuse the test factories

import asyncpg
import nats
import nats.js.errors

from api.stats_scan import leaderboard
from echelon.embedded import StackUrls
from echelon.setup import set_up
from echelon_platform.adapters.readmodel_store import DEFAULT_NAMESPACE, BulkReader, ReadModels
from echelon_platform.adapters.readmodel_writer import Checkpoint, Projector, checkpoint_key
from echelon_platform.config import Settings
from echelon_platform.domain.certificate import build_certificate
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    CertificateIssued,
    JudgeCalled,
    RatingSubmitted,
    ReplayScored,
    RunCompleted,
    RunFailed,
    RunIngested,
    make_event,
)
from echelon_platform.domain.projections import READ_MODEL_GENERATION
from echelon_platform.log_config import configure_logging
from scripts.benchlib import isolated, server_env, servers, uvicorn_process, wrk
from tests.factories import T0, requested, score
from tests.integration.test_api_support import free_port

BATCH = 256
ROUNDS = 3  # the sets alternate; each figure is the median over the rounds


def run_log(i: int, rng: random.Random) -> Iterator[Envelope]:
    run_id = f"B{i:06d}"
    construct = f"oracle-{rng.randrange(200):03d}"
    yield requested(run_id, f"user{rng.randrange(500)}", construct)
    fate = i % 4
    if fate == 3:
        return  # still running
    replay = f"{run_id}-0000"
    s = score(replay, 0).model_copy(
        update={"precision": rng.random(), "scoring_model": rng.choice(("judge-x", "judge-y"))}
    )
    yield make_event(ReplayScored(run_id=run_id, replay_id=replay, score=s))
    yield make_event(RunIngested(run_id=run_id, total=1, ground_truth_source="github", commit_range="a..b"))
    if fate != 0:
        yield make_event(RunFailed(run_id=run_id, reason="below the minimum", stage="certify"))
        return
    yield make_event(
        JudgeCalled(
            run_id=run_id,
            replay_id=replay,
            call_key=f"{replay}:score:x:1:{i:016x}",
            judge="x",
            model=s.scoring_model,
            purpose="score",
            round_trip=1,
            prompt_sha256="0" * 64,
            methodology_version="v1",
            input_tokens=rng.randrange(2000),
            output_tokens=rng.randrange(500),
            cost_usd=rng.random() / 100,
            raw_text="{}",
            usable=True,
        )
    )
    cert = build_certificate(
        run_id=run_id,
        construct_id=construct,
        scores=[s],
        failed=[],
        weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
        min_replays=1,
        ground_truth_source="github",
        commit_range="a..b",
        methodology_version="v1",
        timestamp=T0 + timedelta(seconds=i),
    )
    yield make_event(CertificateIssued(run_id=run_id, certificate=cert))
    yield make_event(RunCompleted(run_id=run_id, certificate_id=cert.certificate_id))
    yield make_event(
        RatingSubmitted(
            run_id=run_id,
            rating_id=f"r{i}",
            certificate_id=cert.certificate_id,
            replay_id=replay,
            user_id=f"user{rng.randrange(500)}",
            rating=rng.randint(1, 5),
            rated_at=T0,
        )
    )


async def seed(settings: Settings, runs: int) -> dict[str, Any]:
    """Project `runs` runs' events into the set's read models, as the coordinator would."""
    rng = random.Random(runs)
    started = time.perf_counter()
    prefix = settings.redis_prefix
    events = 0
    async with Projector(str(settings.redis_url), prefix) as projector:
        await projector.redis.set(
            checkpoint_key(prefix), Checkpoint(READ_MODEL_GENERATION, 0, DEFAULT_NAMESPACE).encode()
        )
        batch: list[tuple[Envelope, int]] = []
        for i in range(runs):
            for event in run_log(i, rng):
                events += 1
                batch.append((event, events))
                if len(batch) == BATCH:
                    await projector.project(batch)
                    batch = []
        if batch:
            await projector.project(batch)
    return {
        "runs": runs,
        "certificates": (runs + 3) // 4,
        "events": events,
        "seconds": round(time.perf_counter() - started, 1),
    }


async def scan_ms(settings: Settings, rounds: int = 3) -> float:
    """The old /stats computation (scan every run, certificate and rating), in this process."""
    times = []
    async with ReadModels(str(settings.redis_url), settings.redis_prefix) as rm:
        reader = BulkReader(rm)
        for _ in range(rounds):
            t = time.perf_counter()
            runs, certs = await reader.all_runs(), await reader.all_certificates()
            ratings = await reader.ratings_of([c["certificate_id"] for c in certs])
            public = {c["run_id"] for c in certs}
            leaderboard([r for r in runs if r.run_id in public], certs, ratings, "construct_id", {})
            times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 1)


async def discard(settings: Settings, urls: StackUrls) -> None:
    """Drop the set's keys, stream (its API created it) and database."""
    nc = await nats.connect(urls.nats_url)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(settings.stream_name)
    finally:
        await nc.close()
    async with ReadModels(str(settings.redis_url), settings.redis_prefix) as rm:
        batch = [key async for key in rm.redis.scan_iter(match=f"{settings.redis_prefix}*", count=5000)]
        for i in range(0, len(batch), 1000):
            await rm.redis.unlink(*batch[i : i + 1000])
    conn = await asyncpg.connect(urls.database_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{str(settings.database_url).rsplit("/", 1)[1]}"')
    finally:
        await conn.close()


async def measure(args: argparse.Namespace, large: Settings, small: Settings) -> dict[str, Any]:
    seeded = {"large": await seed(large, args.runs), "small": await seed(small, args.small)}
    scans = {"large": await scan_ms(large), "small": await scan_ms(small)}
    for settings in (large, small):
        await set_up(settings)  # the stream the API publishes to (roles no longer create it)
    ports = {"large": free_port(), "small": free_port()}
    envs = {"large": server_env(large), "small": server_env(small)}
    results: dict[str, dict[str, list[dict[str, float]]]] = {"large": {}, "small": {}}
    async with (
        uvicorn_process("api.asgi:build_app", ports["large"], envs["large"]) as url_large,
        uvicorn_process("api.asgi:build_app", ports["small"], envs["small"]) as url_small,
    ):
        bases = {"large": url_large, "small": url_small}
        for _ in range(ROUNDS):
            for c in (1, 8):
                for group_by in ("construct_id", "scoring_model"):
                    for name in ("large", "small"):
                        url = f"{bases[name]}/api/v1/verification/stats?group_by={group_by}"
                        got = await asyncio.to_thread(wrk, url, {}, c, args.seconds)
                        results[name].setdefault(f"c{c}:{group_by}", []).append(got)
    report: dict[str, Any] = {"seeded": seeded, "old_scan_ms": scans, "stats": {}}
    for key in results["large"]:
        p99 = {n: statistics.median(r["p99_ms"] for r in results[n][key]) for n in results}
        p50 = {n: statistics.median(r["p50_ms"] for r in results[n][key]) for n in results}
        bad = sum(r["non_2xx"] for n in results for r in results[n][key])
        report["stats"][key] = {
            "p50_ms": p50,
            "p99_ms": p99,
            "p99_ratio_large_over_small": round(p99["large"] / p99["small"], 2),
            "non_2xx": bad,
        }
    return report


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    configure_logging("WARNING", stream=sys.stderr)  # stdout is the report
    base = Settings(stats_per_minute=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        async with servers(base, Path(tmp)) as (urls, _):
            large, small = await isolated(base, urls), await isolated(base, urls)
            try:
                print(json.dumps(await measure(args, large, small), indent=2))
            finally:
                for settings in (large, small):
                    await discard(settings, urls)


if __name__ == "__main__":
    asyncio.run(main())
