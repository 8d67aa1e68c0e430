"""`echelon verify --repeats` and `echelon certificates rescore` as a person runs them: separate processes
against a real API server and pipeline."""

from __future__ import annotations

import asyncio
import re
from contextlib import AsyncExitStack
from pathlib import Path

from api.app import create_app
from api.options import ApiOptions
from coordinator.assembly import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from pipeline_workers.pipeline import Pipeline
from tests.cli import cli_env, run_cli
from tests.integration.test_api_support import serve


async def test_verify_with_repeats_then_rescore_from_the_cli(settings: Settings, tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(Services(settings, name="cli-rescore"))
        coordinator = await stack.enter_async_context(coordinator_for(services, settings))
        pipeline = await stack.enter_async_context(Pipeline(services, settings))
        tasks = [asyncio.create_task(coordinator.run()), asyncio.create_task(pipeline.run(watchdog=False))]
        try:
            app = create_app(settings, services, options=ApiOptions(runs_per_minute=1000, ratings_per_minute=1000))
            address = await stack.enter_async_context(serve(app))
            env = cli_env(
                ECHELON_API_BASE_URL=f"http://{address}",
                ECHELON_DATA_DIR=str(tmp_path),
                ECHELON_JWT_SECRET=settings.jwt_secret.get_secret_value(),
            )
            oracle = ("--oracle-callable", "pipeline_workers.oracles.sample:summarise")
            verified = await run_cli(
                "verify", "sample", *oracle, "--limit", "2", "--repeats", "2", "--watch", cwd=tmp_path, env=env
            )
            assert verified.code == 0, verified.stderr
            run_id = verified.stdout.splitlines()[0].split()[1]
            bad = await run_cli("verify", "sample", *oracle, "--repeats", "11", cwd=tmp_path, env=env)
            as_user = await run_cli(
                "certificates",
                "rescore",
                run_id,
                "--methodology",
                "v1",
                "--token",
                "not-a-token",
                cwd=tmp_path,
                env=env,
            )
            rescored = await run_cli(
                "certificates", "rescore", f"cert-{run_id}", "--methodology", "v1", "--watch", cwd=tmp_path, env=env
            )
        finally:
            coordinator.stop()
            pipeline.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

    # The sample oracle is deterministic: every figure has zero spread over the two repeats.
    assert re.search(r"^precision ×2\s+mean [0-9.]+  sd 0\.000000  min", verified.stdout, re.M), verified.stdout
    assert "ingested 2 change(s) × 2 repeats from " in verified.stdout
    assert "replaying 2 change(s) × 2 repeats: oracle, then judge" in verified.stdout, verified.stdout
    assert bad.code != 0 and "repeats" in bad.stderr and "Traceback" not in bad.stderr
    assert as_user.code != 0 and "401" in as_user.stderr and "Traceback" not in as_user.stderr
    assert rescored.code == 0, rescored.stderr
    first_line = rescored.stdout.splitlines()[0]
    assert first_line.startswith(f"rescore of run {run_id} under v1: run r"), rescored.stdout
    assert re.search(rf"^rescored from\s+cert-{run_id}$", rescored.stdout, re.M), rescored.stdout
    assert re.search(r"^precision ×2\s+mean", rescored.stdout, re.M)  # a rescore keeps the source's repeats
