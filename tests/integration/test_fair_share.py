"""A user whose oracles hang holds up only that user's runs: stage slots are shared fairly across users.

The case seen under faults, on a separate invoke process with 8 slots and a cap of 4 per run: user A's
hanging oracles (one sync, one async Python callable, limit 5 each) were ahead of user B's ten sample runs
on the stream, took every slot until their timeout, and B's runs took 23-27 s instead of well under one.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import nats.errors

from coordinator.assembly import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import OracleSpec, RunRequested, make_event
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.pipeline import Pipeline
from tests.cli import ROOT
from tests.factories import T0
from tests.helpers import wait_for
from tests.integration.test_role_exit_codes import role_env

HANG_TIMEOUT_S = 60.0  # A's oracles hold their slots this long; B's runs must not wait for it
DEADLINE_S = 15.0  # B's ten runs alone take well under a second; first come, first served took 23-27 s
TARGETS = "tests.integration.oracle_targets"
ALLOWLIST = ["pipeline_workers.oracles.sample:summarise", f"{TARGETS}:hang", f"{TARGETS}:hang_async"]


def hanging(name: str) -> OracleSpec:
    return OracleSpec(type="python", module=TARGETS, callable=name, timeout_s=HANG_TIMEOUT_S)


def request(run_id: str, user: str, repo: Path, oracle: OracleSpec, limit: int) -> Envelope:
    return make_event(
        RunRequested(
            run_id=run_id,
            user_id=user,
            construct_id=run_id,
            repo_url=str(repo),
            oracle=oracle,
            limit=limit,
            min_replays=1,
            weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
            created_at=T0,
        )
    )


async def test_a_users_hanging_oracles_hold_up_only_that_users_runs(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"oracle_allowlist": ALLOWLIST, "ack_wait_s": 30.0})
    repo = await materialise_sample_repo(settings.data_dir / "sample-repo")
    env = role_env(settings) | {
        "ECHELON_ORACLE_ALLOWLIST": json.dumps(ALLOWLIST),
        "ECHELON_STAGE_CONCURRENCY": "8",
        "ECHELON_STAGE_PER_RUN_CONCURRENCY": "4",
        "ECHELON_FETCH_TIMEOUT_S": "0.2",
    }
    with (tmp_path / "invoke.log").open("wb") as log:
        invoke = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "echelon.cli", "worker", "invoke", cwd=ROOT, env=env, stdout=log, stderr=log
        )
    hung = [
        request(f"A-{name.replace('_', '-')}", "alice", repo, hanging(name), 5)
        for name in ("hang", "hang_async")
    ]  # fmt: skip
    sample = OracleSpec(type="python", module="pipeline_workers.oracles.sample", callable="summarise")
    normal = [f"B{i}" for i in range(10)]
    try:
        async with (
            Services(settings, name="test") as services,
            coordinator_for(services, settings) as coordinator,
            Pipeline(services, settings, stages=("ingest", "score", "certify")) as pipeline,
        ):
            tasks = [asyncio.create_task(coordinator.run()), asyncio.create_task(pipeline.run(watchdog=False))]
            try:

                async def invoke_pulling() -> bool:
                    try:
                        info = await services.bus.js.consumer_info(
                            settings.stream_name, f"{settings.consumer_prefix}-invoke"
                        )
                    except (nats.errors.Error, TimeoutError):
                        return False
                    return bool(info.num_waiting)

                await wait_for(invoke_pulling, timeout=60, what="the invoke process pulling")
                for envelope in hung:
                    await services.bus.publish(envelope)

                async def hung_runs_requested() -> bool:
                    states = [await services.read_models.get_run(e.run_id) for e in hung]
                    return all(s is not None and s.total is not None for s in states)

                # A's replays are on the stream ahead of every one of B's: the invoke stage meets them first.
                await wait_for(hung_runs_requested, timeout=30, what="the hanging runs' replays to be requested")
                started = time.monotonic()
                for run_id in normal:
                    await services.bus.publish(request(run_id, "bob", repo, sample, 3))

                async def b_completed() -> bool:
                    states = [await services.read_models.get_run(r) for r in normal]
                    return all(s is not None and s.status.name == "COMPLETED" for s in states)

                await wait_for(b_completed, timeout=DEADLINE_S, interval=0.1, what="user B's runs to complete")
                elapsed = time.monotonic() - started
                for envelope in hung:  # still waiting on their own oracles
                    state = await services.read_models.get_run(envelope.run_id)
                    assert state is not None and not state.status.terminal
                assert elapsed < DEADLINE_S < HANG_TIMEOUT_S
            finally:
                coordinator.stop()
                pipeline.stop()
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    finally:
        invoke.terminate()
        await invoke.wait()
