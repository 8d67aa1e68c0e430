"""Judge concurrency is one adaptive limit per provider endpoint and key, shared by every process using it.

Real role processes (two `echelon worker score`) and this test's invoke stage call one Anthropic-compatible
judge over HTTP (tests/fake_judge.py) that refuses calls above its concurrency limit with 429 + retry-after
and counts what it sees.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import nats.errors
from pydantic import SecretStr

from coordinator.assembly import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import OracleSpec, RunRequested, make_event
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.pipeline import Pipeline
from tests.cli import ROOT, cli_env
from tests.factories import T0
from tests.helpers import wait_for
from tests.integration.test_api_support import free_port
from tests.integration.test_role_exit_codes import role_env

API_KEY = "sk-ant-api03-fake-shared-key-0123456789"
SCORE_MODELS = ("claude-haiku-4-5", "claude-opus-4-1")  # one per score process, so the judge can tell them apart
SAMPLE = OracleSpec(type="python", module="pipeline_workers.oracles.sample", callable="summarise")


@asynccontextmanager
async def fake_judge(*args: str) -> AsyncIterator[str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fake_judge", "--port", str(port), *args, cwd=ROOT, env=cli_env()
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:

            async def up() -> bool:
                try:
                    return (await client.get(f"{base}/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(up, timeout=30, what="the fake judge to answer")
        yield base
    finally:
        proc.terminate()
        await proc.wait()


async def judge_stats(base: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        stats: dict[str, Any] = (await client.get(f"{base}/stats")).json()
        return stats


@asynccontextmanager
async def score_processes(settings: Settings, base: str, tmp_path: Path, cap: int) -> AsyncIterator[None]:
    procs = []
    for model in SCORE_MODELS:
        env = role_env(settings) | {
            "ECHELON_ANTHROPIC_API_KEY": API_KEY,
            "ECHELON_ANTHROPIC_BASE_URL": base,
            "ECHELON_JUDGE_MODEL": model,
            "ECHELON_JUDGE_CONCURRENCY": str(cap),
            "ECHELON_FETCH_TIMEOUT_S": "0.2",
        }
        log = (tmp_path / f"score-{model}.log").open("wb")
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "echelon.cli", "worker", "score", cwd=ROOT, env=env, stdout=log, stderr=log
            )
        )
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        await asyncio.gather(*(p.wait() for p in procs))


def run_request(run_id: str, repo: Path, limit: int) -> Any:
    return make_event(
        RunRequested(
            run_id=run_id,
            user_id=f"user-{run_id}",
            construct_id=run_id,
            repo_url=str(repo),
            oracle=SAMPLE,
            limit=limit,
            min_replays=1,
            weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
            created_at=T0,
            judge_cache=False,  # identical prompts across runs must reach the provider: its load is measured
        )
    )


async def run_against_judge(
    settings: Settings, base: str, tmp_path: Path, *, cap: int, runs: int, during: Any = None
) -> dict[str, Any]:
    """Runs of 8 sample replays each through the in-process invoke stage and two score processes."""
    settings = settings.model_copy(
        update={
            "anthropic_api_key": SecretStr(API_KEY),
            "anthropic_base_url": base,
            "judge_concurrency": cap,
            "ack_wait_s": 30.0,
        }
    )
    repo = await materialise_sample_repo(settings.data_dir / "sample-repo")
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(Services(settings, name="test"))
        coordinator = await stack.enter_async_context(coordinator_for(services, settings))
        pipeline = await stack.enter_async_context(Pipeline(services, settings, stages=("ingest", "invoke", "certify")))
        await stack.enter_async_context(score_processes(settings, base, tmp_path, cap))
        tasks = [asyncio.create_task(coordinator.run()), asyncio.create_task(pipeline.run(watchdog=False))]
        try:

            async def both_pulling() -> bool:
                durable = f"{settings.consumer_prefix}-score"
                try:
                    info = await services.bus.js.consumer_info(settings.stream_name, durable)
                except (nats.errors.Error, TimeoutError):
                    return False
                return (info.num_waiting or 0) >= 2

            await wait_for(both_pulling, timeout=90, what="both score processes pulling")
            run_ids = [f"R{i}" for i in range(runs)]
            for run_id in run_ids:
                await services.bus.publish(run_request(run_id, repo, limit=8))

            async def all_ended() -> bool:
                if during is not None:
                    await during()
                states = [await services.read_models.get_run(r) for r in run_ids]
                return all(s is not None and s.status.name in ("COMPLETED", "FAILED") for s in states)

            await wait_for(all_ended, timeout=180, interval=0.1, what="every run to end")
            states = [await services.read_models.get_run(r) for r in run_ids]
            assert all(s is not None and s.status.name == "COMPLETED" for s in states), states
            failed = [e for r in run_ids for e in await services.store.run_events(r, ["verify.replay.failed"])]
            assert not failed, [e.payload for e in failed]
            keys = [k async for k in services.read_models.redis.scan_iter(f"{settings.redis_prefix}limit:*")]
            limits = [await services.read_models.redis.hget(k, "limit") for k in keys if not k.endswith(b":leases")]
            return {"judge": await judge_stats(base), "limits": [float(v) for v in limits if v is not None]}
        finally:
            pipeline.stop()
            coordinator.stop()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_score_processes_sharing_a_key_stay_within_one_shared_limit(settings: Settings, tmp_path: Path) -> None:
    # The provider allows 4 at once; each of the three processes may use up to 4: only one limit for all of
    # them keeps the judge from ever seeing a fifth call (per-process limits would send up to 12).
    async with fake_judge("--latency", "0.3", "--concurrency", "4") as base:
        seen = await run_against_judge(settings, base, tmp_path, cap=4, runs=3)
    judge = seen["judge"]
    assert judge["served"] >= 3 * 8 * 2
    assert all(judge["by_model"].get(model, 0) > 0 for model in SCORE_MODELS), judge  # both processes scored
    assert judge["peak_arriving"] <= 4, judge
    assert judge["refused"] == 0, judge


async def test_the_limit_follows_a_provider_that_lowers_its_own(settings: Settings, tmp_path: Path) -> None:
    async with fake_judge("--latency", "0.3", "--concurrency", "6") as base, httpx.AsyncClient() as client:
        at_drop: dict[str, Any] = {}

        async def lower_after_a_while() -> None:
            if not at_drop and (await judge_stats(base))["served"] >= 12:
                at_drop.update((await client.post(f"{base}/limits", json={"concurrency": 2})).json())

        seen = await run_against_judge(settings, base, tmp_path, cap=6, runs=3, during=lower_after_a_while)
    judge = seen["judge"]
    assert at_drop, "the limit was never lowered"
    served_after = judge["served"] - at_drop["served"]
    refused_after = judge["refused"] - at_drop["refused"]
    # Every replay still scored (asserted in run_against_judge); the limit came down to the provider's, so
    # most calls after the drop went through the first time.
    assert refused_after < served_after / 2, (at_drop, judge)
    assert seen["limits"] and max(seen["limits"]) < 4, seen  # from 6, near the provider's 2 (AIMD probes above)
