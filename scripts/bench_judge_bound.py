"""Time to the last certificate next to the judge's own bound, in one run, against a scripted judge.

    python scripts/bench_judge_bound.py [--cases 1x40@1,4x20@1,1x40@0.2/30,1x200@5/1000] [--fair 500]

The judge is Anthropic-compatible over HTTP (tests/fake_judge.py, its own process): every call takes the
case's latency; a case with `/R` allows R requests per minute (a token bucket of 10 s worth, refilled
continuously; 429 + retry-after and `anthropic-ratelimit-requests-*` headers, as the API does). Runs use the
bundled sample oracle on a generated repository with enough squash-merged PRs, and the whole pipeline
(coordinator and every stage, default settings) as `echelon stack up` runs it: the coordinator and the
stage worker each in its own process (`--roles in-process`: both in this one); they are published at once
and timed to the last COMPLETED run.

The judge's bound: each replay needs two sequential judge calls (the question, then the score), so at
best 2 x latency; with a rate limit, the calls past the bucket arrive at the refill rate, the last one
then takes one latency: max(2L, (calls - burst) / rate + L). Printed next to it, in the same run: the
pipeline's own floor (the same runs against a judge answering at once and without limits).

`--lowered`: the shared limit over time while the provider lowers its concurrency limit mid-run.

`--fair N`: user A's N-replay run, and user B's 5-replay run published just behind it; B's time to its
certificate next to its time alone (the same judge, 1 s per call, no provider limit).

Uses the configured NATS_URL/DATABASE_URL/REDIS_URL, else embedded servers. The adaptive judge limit is
forgotten between cases (each case is a fresh provider key).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fake judge lives with the tests

from coordinator.assembly import coordinator_for
from echelon.stack import prepare
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import utcnow
from echelon_platform.domain.events import OracleSpec, RunRequested, make_event
from echelon_platform.log_config import configure_logging
from pipeline_workers.pipeline import Pipeline
from scripts.benchlib import ROOT, isolated, server_env, servers

SAMPLE = OracleSpec(type="python", module="pipeline_workers.oracles.sample", callable="summarise")
API_KEY = "sk-ant-api03-bench-0123456789abcdef"


@dataclass(frozen=True)
class Case:
    name: str
    runs: int
    replays: int
    latency_s: float
    rpm: float | None

    @classmethod
    def parse(cls, text: str) -> Case:
        shape, _, rest = text.partition("@")
        runs, _, replays = shape.partition("x")
        latency, _, rpm = rest.partition("/")
        return cls(text, int(runs), int(replays), float(latency), float(rpm) if rpm else None)

    @property
    def calls(self) -> int:
        return 2 * self.runs * self.replays

    @property
    def burst(self) -> float | None:
        return None if self.rpm is None else max(1.0, self.rpm / 6)

    def bound(self) -> float:
        if self.rpm is None or self.burst is None:
            return 2 * self.latency_s
        return max(2 * self.latency_s, max(0.0, self.calls - self.burst) / (self.rpm / 60) + self.latency_s)


def generated_repo(path: Path, changes: int) -> Path:
    """A repository of `changes` squash-merged PRs ("... (#N)"), each adding a small module, via fast-import."""
    if path.exists():
        return path
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    stream: list[bytes] = []
    for n in range(1, changes + 1):
        body = (
            f'"""Helper number {n}."""\n\n\ndef helper_{n}(values: list[int]) -> int:\n'
            f'    """Sum of the values times {n}."""\n    return sum(values) * {n}\n'
        ).encode()
        message = f"Add helper_{n} to the toolkit (#{n})\n\nhelper_{n} multiplies the sum by {n}.\n".encode()
        stamp = 1_700_000_000 + n * 3600
        stream += [
            b"commit refs/heads/main\n",
            f"committer Ada <ada@example.com> {stamp} +0000\n".encode(),
            f"data {len(message)}\n".encode() + message,
            f"M 100644 inline toolkit/helper_{n}.py\n".encode(),
            f"data {len(body)}\n".encode() + body + b"\n",
        ]
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet"], input=b"".join(stream), check=True)
    subprocess.run(["git", "-C", str(path), "reset", "-q", "--hard", "main"], check=True)
    return path


@contextlib.asynccontextmanager
async def fake_judge(port: int) -> AsyncIterator[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fake_judge", "--port", str(port), cwd=ROOT, env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        await proc.wait()


class Bench:
    def __init__(self, services: Services, settings: Settings, judge: str, repo: Path, *, tracing: bool) -> None:
        self.tracing = tracing
        self.services = services
        self.settings = settings
        self.judge = judge
        self.repo = repo
        self.http = httpx.AsyncClient(timeout=30)
        self.seq = 0
        self.last_ids: list[str] = []

    async def provider(self, **limits: Any) -> dict[str, Any]:
        stats: dict[str, Any] = (await self.http.post(f"{self.judge}/limits", json=limits)).json()
        return stats

    async def forget_limits(self) -> None:
        redis = self.services.read_models.redis
        keys = [k async for k in redis.scan_iter(f"{self.settings.redis_prefix}limit:*")]
        if keys:
            await redis.delete(*keys)

    async def submit(self, user: str, replays: int) -> str:
        self.seq += 1
        run_id = f"bench{self.seq:04d}"
        request = RunRequested(
            run_id=run_id,
            user_id=user,
            construct_id=f"bench-{user}",
            repo_url=str(self.repo),
            oracle=SAMPLE,
            limit=replays,
            min_replays=1,
            weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
            created_at=utcnow(),
            judge_cache=False,  # every case asks the provider: the floor phase's logged answers must not be reused
        )
        await self.services.bus.publish(make_event(request))
        return run_id

    async def wait(self, run_ids: list[str], started: float, timeout_s: float = 3600) -> dict[str, float]:
        """Seconds from `started` to each run's COMPLETED in the read model (what a client reads). Woken by
        the run's terminal event on NATS, then the read model is read until it shows it (every 5 ms, only for
        such a run): polling every run every few ms would spend the CPU the system under test needs."""
        done: dict[str, float] = {}
        ended: set[str] = set()
        woken = asyncio.Event()
        subjects = self.services.bus.subjects

        async def on_end(msg: Any) -> None:
            ended.add(msg.subject.rsplit(".", 1)[-1])
            woken.set()

        nc = self.services.bus.nc
        subs = [
            await nc.subscribe(subjects.topic_filter(topic), cb=on_end)
            for topic in ("verify.run.completed", "verify.run.failed")
        ]
        try:
            deadline = time.monotonic() + timeout_s
            look_at_all = True  # at first, and after a second without news (an event missed)
            while len(done) < len(run_ids):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"runs not done: {sorted(set(run_ids) - set(done))}")
                woken.clear()
                for run_id in [r for r in run_ids if r not in done and (look_at_all or r in ended)]:
                    state = await self.services.read_models.get_run(run_id)
                    if state is not None and state.status.terminal:
                        if state.status.name != "COMPLETED":
                            raise RuntimeError(f"run {run_id} ended {state.status.name}")
                        done[run_id] = time.monotonic() - started
                look_at_all = False
                if any(r in ended and r not in done for r in run_ids):
                    await asyncio.sleep(0.005)  # logged, not in the read model yet
                    continue
                try:
                    await asyncio.wait_for(woken.wait(), 1.0)
                except TimeoutError:
                    look_at_all = True
        finally:
            for sub in subs:
                await sub.unsubscribe()
        return done

    async def timed(self, runs: int, replays: int) -> float:
        started = time.monotonic()
        ids = [await self.submit(f"user{i}", replays) for i in range(runs)]
        self.last_ids = ids
        return max((await self.wait(ids, started)).values())

    async def trace(self) -> dict[str, list[float]]:
        """For the last runs timed: per topic, seconds from the request to its first and last event."""
        spans: dict[str, list[float]] = {}
        for run_id in self.last_ids:
            events = await self.services.store.run_events(run_id)
            t0 = min(e.timestamp for e in events)
            for e in events:
                at = (e.timestamp - t0).total_seconds()
                first, last = spans.get(e.topic, [at, at])
                spans[e.topic] = [round(min(first, at), 2), round(max(last, at), 2)]
        return dict(sorted(spans.items(), key=lambda kv: kv[1]))

    async def case(self, case: Case) -> dict[str, Any]:
        await self.forget_limits()
        await self.provider(latency=0.0, concurrency=None, rpm=None, burst=None, reset=True)
        await self.timed(1, min(16, case.replays))  # warm: oracle processes, connections, caches
        floor = await self.timed(case.runs, case.replays)
        floor_trace = await self.trace() if self.tracing else None
        await self.forget_limits()
        before = await self.provider(latency=case.latency_s, rpm=case.rpm, burst=case.burst, reset=True)
        cpu = time.process_time()
        measured = await self.timed(case.runs, case.replays)
        cpu = time.process_time() - cpu
        judge: dict[str, Any] = (await self.http.get(f"{self.judge}/stats")).json()
        bound = case.bound()
        traces = {"floor_trace": floor_trace, "trace": await self.trace()} if self.tracing else {}
        return {
            **traces,
            "case": case.name,
            "runs": case.runs,
            "replays": case.replays,
            "latency_s": case.latency_s,
            "rpm": case.rpm,
            "to_last_certificate_s": round(measured, 2),
            "judge_bound_s": round(bound, 2),
            "ratio": round(measured / bound, 2),
            "pipeline_floor_s": round(floor, 2),
            "ratio_to_bound_plus_floor": round(measured / (bound + floor), 2),
            "judge_calls": judge["served"],
            "judge_429": judge["refused"],
            "judge_peak_in_flight": judge["peak_in_flight"],
            # The scripted provider runs on the same cores as the service (a real one spends this elsewhere).
            "judge_cpu_s": round(judge["cpu_s"] - before["cpu_s"], 2),
            "this_process_cpu_s": round(cpu, 2),  # with --roles in-process: the coordinator and every stage
        }

    async def lowered(self, replays: int = 60, high: int = 16, low: int = 4, after: int = 20) -> dict[str, Any]:
        """A provider allowing `high` calls at once (0.5 s each) lowers it to `low` after `after` calls:
        the shared limit, the calls in flight at the judge and its refusals, sampled every 0.5 s."""
        await self.forget_limits()
        await self.provider(latency=0.5, concurrency=high, rpm=None, burst=None, reset=True)
        started = time.monotonic()
        run_id = await self.submit("user0", replays)
        done = asyncio.create_task(self.wait([run_id], started))
        redis = self.services.read_models.redis
        timeline: list[tuple[float, float | None, int, int]] = []
        lowered_at = None
        while not done.done():
            stats: dict[str, Any] = (await self.http.get(f"{self.judge}/stats")).json()
            if lowered_at is None and stats["served"] >= after:
                await self.provider(concurrency=low)
                lowered_at = round(time.monotonic() - started, 2)
            limits = [
                float(v)
                async for key in redis.scan_iter(f"{self.settings.redis_prefix}limit:*")
                if not key.endswith(b":leases") and (v := await redis.hget(key, "limit")) is not None
            ]
            limit = round(limits[0], 2) if limits else None
            timeline.append((round(time.monotonic() - started, 1), limit, stats["in_flight"], stats["refused"]))
            await asyncio.sleep(0.5)
        total = (await done)[run_id]
        stats = (await self.http.get(f"{self.judge}/stats")).json()
        return {
            "case": f"provider lowers its concurrency limit {high} -> {low} after {after} calls (0.5 s each)",
            "lowered_at_s": lowered_at,
            "to_certificate_s": round(total, 2),
            "served": stats["served"],
            "refused": stats["refused"],
            "timeline [t_s, shared_limit, judge_in_flight, refused_so_far]": timeline,
        }

    async def fairness(self, big: int, small: int = 5) -> dict[str, Any]:
        await self.forget_limits()
        await self.provider(latency=1.0, concurrency=None, rpm=None, burst=None, reset=True)
        await self.timed(1, small)  # warm
        alone = await self.timed(1, small)
        started = time.monotonic()
        big_id = await self.submit("alice", big)
        small_id = await self.submit("bob", small)
        small_done = (await self.wait([small_id], started))[small_id]
        self.last_ids = [small_id]
        small_trace = await self.trace() if self.tracing else None
        big_done = (await self.wait([big_id], started))[big_id]
        return {
            **({"small_trace": small_trace} if small_trace else {}),
            "case": f"fair: {small} replays of user B behind {big} of user A",
            "small_alone_s": round(alone, 2),
            "small_behind_big_s": round(small_done, 2),
            "ratio": round(small_done / alone, 2),
            "big_s": round(big_done, 2),
        }


async def main(args: argparse.Namespace) -> None:
    configure_logging("WARNING")  # to stderr; the numbers go to stdout
    cases = [Case.parse(c) for c in args.cases.split(",") if c]
    base = Settings()
    most = max([c.replays for c in cases] + [args.fair or 0, 60 if args.lowered else 16])
    with tempfile.TemporaryDirectory(prefix="bench-judge-") as tmp:
        data = Path(tmp)
        async with servers(base, data) as (urls, _), fake_judge(args.port) as judge:
            settings = (await isolated(base, urls)).model_copy(
                update={
                    "data_dir": data,
                    "anthropic_api_key": SecretStr(API_KEY),
                    "anthropic_base_url": judge,
                    "ack_wait_s": 120.0,
                }
            )
            repo = generated_repo(data / "bench-repo", most)
            async with Services(settings, name="bench") as services, roles(services, settings, args.processes):
                bench = Bench(services, settings, judge, repo, tracing=args.trace)
                try:
                    for case in cases:
                        print(json.dumps({**await bench.case(case), "roles": args.processes}), flush=True)
                    if args.lowered:
                        print(json.dumps(await bench.lowered()), flush=True)
                    if args.fair:
                        print(json.dumps(await bench.fairness(args.fair)), flush=True)
                finally:
                    await bench.http.aclose()


@contextlib.asynccontextmanager
async def roles(services: Services, settings: Settings, how: str) -> AsyncIterator[None]:
    """The coordinator and every stage: in this process, or each in its own as `echelon stack up` runs them."""
    if how == "processes":
        await prepare(settings)
        env = {
            **server_env(settings),
            "ECHELON_ANTHROPIC_API_KEY": API_KEY,
            "ECHELON_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        procs = [
            await asyncio.create_subprocess_exec(sys.executable, "-m", "echelon.cli", role, cwd=ROOT, env=env)
            for role in ("coordinator", "worker")
        ]
        try:
            yield
        finally:
            for proc in procs:
                proc.terminate()
            await asyncio.gather(*(proc.wait() for proc in procs))
        return
    async with coordinator_for(services, settings) as coordinator, Pipeline(services, settings) as pipeline:
        tasks = [asyncio.create_task(coordinator.run()), asyncio.create_task(pipeline.run(watchdog=False))]
        try:
            yield
        finally:
            coordinator.stop()
            pipeline.stop()
            await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="1x40@1,4x20@1,1x40@0.2/30,1x200@5/1000")
    parser.add_argument("--fair", type=int, default=0, help="replays of user A's big run (0: skip)")
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--lowered", action="store_true", help="a provider that lowers its limit mid-run")
    parser.add_argument("--trace", action="store_true", help="per topic: first and last event of the runs")
    parser.add_argument(
        "--roles",
        dest="processes",
        choices=("processes", "in-process"),
        default="processes",
        help="coordinator and stage worker each in its own process (as `echelon stack up` runs them), or all here",
    )
    asyncio.run(main(parser.parse_args()))
