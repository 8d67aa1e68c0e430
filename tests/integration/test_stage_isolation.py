"""One user's hanging oracle costs only that user's run: the others finish in their normal time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from coordinator.assembly import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import OracleSpec, RunRequested, make_event
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.pipeline import Pipeline
from tests.factories import T0
from tests.helpers import wait_for

HANG_TIMEOUT_S = 100.0  # far beyond the deadline the other runs are held to


def run_request(run_id: str, repo: Path, oracle: OracleSpec, limit: int) -> Envelope:
    return make_event(
        RunRequested(
            run_id=run_id,
            user_id=f"user-{run_id}",
            construct_id=run_id,
            repo_url=str(repo),
            oracle=oracle,
            limit=limit,
            min_replays=1,
            weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
            created_at=T0,
        )
    )


async def test_a_hanging_sync_oracle_does_not_hold_up_other_runs(settings: Settings) -> None:
    settings = settings.model_copy(
        update={
            "oracle_allowlist": ["pipeline_workers.oracles.sample:summarise", "tests.integration.oracle_targets:hang"],
            "stage_concurrency": 4,
            "stage_per_run_concurrency": 2,
            "ack_wait_s": 30.0,
        }
    )
    repo = await materialise_sample_repo(settings.data_dir / "sample-repo")
    hang = OracleSpec(
        type="python", module="tests.integration.oracle_targets", callable="hang", timeout_s=HANG_TIMEOUT_S
    )
    sample = OracleSpec(type="python", module="pipeline_workers.oracles.sample", callable="summarise")
    async with (
        Services(settings, name="test") as services,
        coordinator_for(services, settings) as coordinator,
        Pipeline(services, settings) as pipeline,
    ):
        tasks = [asyncio.create_task(coordinator.run()), asyncio.create_task(pipeline.run(watchdog=False))]
        try:
            await services.bus.publish(run_request("HUNG", repo, hang, limit=8))
            invoke = next(w for w in pipeline.workers if w.handler.stage == "invoke")

            async def hung_run_ingested() -> bool:
                state = await services.read_models.get_run("HUNG")
                return state is not None and state.total is not None

            # Its replays are on the stream ahead of every other run's: the invoke stage meets them first.
            await wait_for(hung_run_ingested, what="the hanging run's replays to be requested")

            started = time.monotonic()
            normal = [f"OK{i}" for i in range(3)]
            for run_id in normal:
                await services.bus.publish(run_request(run_id, repo, sample, limit=3))

            async def all_completed() -> bool:
                states = [await services.read_models.get_run(r) for r in normal]
                return all(s is not None and s.status.name == "COMPLETED" for s in states)

            await wait_for(all_completed, timeout=30, what="the other runs to complete")
            elapsed = time.monotonic() - started
            hung = await services.read_models.get_run("HUNG")
            assert hung is not None and not hung.status.terminal  # still waiting on its own oracle
            assert elapsed < 30 < HANG_TIMEOUT_S
            assert invoke.stats.deferred > 0  # the hanging run's other replays were put back, not held
        finally:
            coordinator.stop()
            pipeline.stop()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
