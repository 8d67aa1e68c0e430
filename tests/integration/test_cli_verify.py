"""`echelon verify sample --watch` as a person runs it: a separate process, against a real API server and
pipeline whose data directory is not the CLI's, found through ECHELON_API_PORT alone."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

from api.app import create_app
from api.options import ApiOptions
from coordinator.factory import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from pipeline_workers.pipeline import Pipeline
from tests.cli import cli_env, run_cli
from tests.integration.test_api_support import serve


async def test_verify_sample_certifies_on_a_server_with_another_data_directory(
    settings: Settings, tmp_path: Path
) -> None:
    server_dir = tmp_path / "server-data"
    client_dir = tmp_path / "client-data"
    server_dir.mkdir()
    client_dir.mkdir()
    settings = settings.model_copy(update={"data_dir": server_dir})
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(Services(settings, name="cli-test"))
        coordinator = await stack.enter_async_context(coordinator_for(services, settings))
        pipeline = await stack.enter_async_context(Pipeline(services, settings))
        tasks = [asyncio.create_task(coordinator.run()), asyncio.create_task(pipeline.run(watchdog=False))]
        try:
            app = create_app(settings, services, options=ApiOptions(runs_per_minute=1000, ratings_per_minute=1000))
            address = await stack.enter_async_context(serve(app))
            env = cli_env(
                ECHELON_API_PORT=address.rsplit(":", 1)[1],
                ECHELON_DATA_DIR=str(client_dir),
                ECHELON_JWT_SECRET=settings.jwt_secret.get_secret_value(),
                ECHELON_LOG_LEVEL="DEBUG",  # whatever the level, request logs must not interleave with the output
            )
            args = ("verify", "sample", "--oracle-callable", "pipeline_workers.oracles.sample:summarise")
            result = await run_cli(*args, "--limit", "3", "--watch", cwd=client_dir, env=env, timeout=90)
        finally:
            coordinator.stop()
            pipeline.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run ") and lines[0].endswith(" submitted")
    assert "COMPLETED" in lines[1]
    assert lines[2].startswith("certificate ")
    assert any(line.startswith("content hash ") for line in lines)
    assert "HTTP Request" not in result.stdout + result.stderr
    assert (server_dir / "sample-repo" / ".git").is_dir()  # the worker cloned it under its own data directory
    assert not (client_dir / "sample-repo").exists()
