"""`echelon verify sample --watch` as a person runs it: a separate process, against a real API server and
pipeline whose data directory is not the CLI's, found through ECHELON_API_PORT alone."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import uvicorn

from api.app import create_app
from api.options import ApiOptions
from coordinator.assembly import coordinator_for
from echelon.endpoint import endpoint_file
from echelon.local_roots import dev_stack_roots
from echelon.stack import AnnouncingServer
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.pipeline import Pipeline
from tests.cli import cli_env, run_cli
from tests.helpers import wait_for
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
    # Not a terminal: one plain line per stage, live from the WebSocket, then the final bar.
    bar = next(i for i, line in enumerate(lines) if "COMPLETED" in line)
    assert lines[1:bar] == [
        "ingesting",
        next(line for line in lines if line.startswith("ingested 3 change(s) from ")),
        "replaying 3 change(s): oracle, then judge",
        "certifying",
        "completed",
    ], result.stdout
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    assert "polling" not in result.stderr, result.stderr
    assert lines[bar + 1].startswith("certificate ")
    assert any(line.startswith("content hash ") for line in lines)
    assert "HTTP Request" not in result.stdout + result.stderr
    assert (server_dir / "sample-repo" / ".git").is_dir()  # the worker cloned it under its own data directory
    assert not (client_dir / "sample-repo").exists()


async def test_verify_dot_in_a_clone_finds_the_local_stack_through_its_endpoint_file(
    settings: Settings, tmp_path: Path
) -> None:
    """A newcomer's flow: stand in a clone, the loopback dev stack started there, run `echelon verify .`
    with no URL settings at all."""
    clone = await materialise_sample_repo(tmp_path / "clone")
    data_dir = clone / ".echelon"
    settings = dev_stack_roots(
        settings.model_copy(update={"data_dir": data_dir, "api_port": 0}), home=tmp_path / "home", cwd=clone
    )
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(Services(settings, name="cli-test"))
        coordinator = await stack.enter_async_context(coordinator_for(services, settings))
        pipeline = await stack.enter_async_context(Pipeline(services, settings))
        tasks = [asyncio.create_task(coordinator.run()), asyncio.create_task(pipeline.run(watchdog=False))]
        app = create_app(settings, services, options=ApiOptions(runs_per_minute=1000, ratings_per_minute=1000))
        server = AnnouncingServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"), settings)
        tasks.append(asyncio.create_task(server.serve()))
        try:
            await wait_for(lambda: endpoint_file(data_dir).exists(), timeout=15, what="the endpoint file")
            env = cli_env(ECHELON_JWT_SECRET=settings.jwt_secret.get_secret_value())
            args = ("verify", ".", "--oracle-callable", "pipeline_workers.oracles.sample:summarise")
            result = await run_cli(*args, "--limit", "2", "--watch", cwd=clone, env=env, timeout=90)
        finally:
            coordinator.stop()
            pipeline.stop()
            server.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
    assert result.code == 0, result.stdout + result.stderr
    assert "ingested 2 change(s)" in result.stdout
    assert any(line.startswith("content hash ") for line in result.stdout.splitlines())
    assert not endpoint_file(data_dir).exists()  # removed on a clean stop


async def test_json_submission_then_resume_watches_the_run_and_prints_its_certificate(
    settings: Settings, tmp_path: Path
) -> None:
    """`--json` without --watch prints the run id; `--resume RUN_ID --json` follows that run's stages (from its
    first event, whether it is still going or has ended) to its certificate; an unknown run is one line."""
    import json

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
                ECHELON_DATA_DIR=str(tmp_path / "client"),
                ECHELON_JWT_SECRET=settings.jwt_secret.get_secret_value(),
            )
            args = ("verify", "sample", "--oracle-callable", "pipeline_workers.oracles.sample:summarise")
            submitted = await run_cli(*args, "--limit", "2", "--json", cwd=tmp_path, env=env, timeout=60)
            assert submitted.code == 0, submitted.stderr
            first = json.loads(submitted.stdout)
            assert first["type"] == "submitted"
            run_id = first["run_id"]
            watched = await run_cli("verify", "--resume", run_id, "--json", cwd=tmp_path, env=env, timeout=90)
            again = await run_cli("verify", "--resume", run_id, "--json", cwd=tmp_path, env=env, timeout=60)
            unknown = await run_cli("verify", "--resume", "no-such-run", cwd=tmp_path, env=env, timeout=60)
        finally:
            coordinator.stop()
            pipeline.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert watched.code == 0, watched.stderr
    objects = [json.loads(line) for line in watched.stdout.splitlines()]  # every line is JSON: no bar
    *stages, result = objects
    assert all(o["type"] == "stage" and o["run_id"] == run_id for o in stages)
    assert stages and stages[-1]["stage"] == "completed"
    assert result["type"] == "result" and result["error"] is None
    assert result["run"]["run_id"] == run_id and result["run"]["status"] == "COMPLETED"
    assert result["certificate"]["id"] == result["run"]["certificate_id"]
    assert result["certificate"]["replay_count"] + len(result["certificate"]["failed_replays"]) == 2
    assert "\r" not in watched.stdout and "\x1b" not in watched.stdout

    assert again.code == 0, again.stderr
    assert [json.loads(line) for line in again.stdout.splitlines()] == objects  # the same, replayed

    assert unknown.code == 1
    assert len(unknown.stderr.strip().splitlines()) == 1 and "404" in unknown.stderr, unknown.stderr
