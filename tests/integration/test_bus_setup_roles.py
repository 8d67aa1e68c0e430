"""Roles on a NATS with a user per role: only `echelon setup` creates the stream and consumers; a stage
whose consumer disappears stops (SetupMissing, non-zero exit), the coordinator re-creates its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

import pipeline_workers.stage as stage_module
from coordinator.assembly import coordinator_for
from echelon.embedded import EmbeddedNats
from echelon.setup import set_up, setup_bus
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.bus_access import STAGE_TOPICS
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Payload
from echelon_platform.domain.roles import Role
from echelon_platform.errors import SetupMissing
from pipeline_workers.handlers.certify import CertifyHandler
from pipeline_workers.handlers.ingest import IngestHandler
from pipeline_workers.handlers.invoke import InvokeHandler
from pipeline_workers.handlers.score import ScoreHandler
from pipeline_workers.stage import StageWorker
from tests.cli import cli_env, run_cli
from tests.factories import requested
from tests.helpers import wait_for


@pytest.fixture
async def auth_settings(settings: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    """The test's Postgres and Redis, with its own NATS requiring a user per role for its names."""
    async with EmbeddedNats(tmp_path / "nats", auth=settings.bus_layout()) as server:
        yield settings.model_copy(update={"nats_url": server.url, "nats_credentials_file": server.credentials_path})


class Recorder:
    stage = "ingest"
    topic = "verify.run.requested"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, envelope: Envelope, payload: Payload) -> Sequence[Envelope]:
        self.seen.append(envelope.run_id)
        return []

    def give_up(self, envelope: Envelope, payload: Payload, reason: str) -> Sequence[Envelope]:
        return []


def test_setup_creates_the_consumers_the_stages_use() -> None:
    handlers = (IngestHandler, InvokeHandler, ScoreHandler, CertifyHandler)
    assert {h.stage: h.topic for h in handlers} == STAGE_TOPICS


async def test_a_stage_stops_when_its_consumer_is_gone(
    auth_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stage_module, "CONSUMER_CHECK_S", 0.2)
    await set_up(auth_settings)
    async with (
        Services(auth_settings, name="api", role=Role.API) as api,
        Services(auth_settings, name="ingest", role=Role.INGEST) as ingest,
    ):
        handler = Recorder()
        worker = StageWorker(
            handler,
            bus=ingest.bus,
            metrics=ingest.metrics,
            durable_prefix=auth_settings.consumer_prefix,
            fetch_timeout_s=0.2,
        )
        running = asyncio.create_task(worker.run())
        await api.bus.publish(requested("R1"))
        await wait_for(lambda: handler.seen == ["R1"], timeout=20, what="the stage to handle R1")
        async with setup_bus(auth_settings) as setup:  # a consumer deleted under the stage's feet
            await setup.js.delete_consumer(setup.stream, worker.durable)
        with pytest.raises(SetupMissing, match="echelon setup"):
            await asyncio.wait_for(running, 20)
        # Setup runs again (what `stack up` does at start): a new worker picks up where the stream is.
        await set_up(auth_settings)
        again = StageWorker(
            handler,
            bus=ingest.bus,
            metrics=ingest.metrics,
            durable_prefix=auth_settings.consumer_prefix,
            fetch_timeout_s=0.2,
        )
        await api.bus.publish(requested("R2"))
        await wait_for(lambda: _run_once(again, handler), timeout=20, what="the new stage to handle R2")


async def _run_once(worker: StageWorker, handler: Recorder) -> bool:
    await worker.run(until_idle=True)
    return "R2" in handler.seen


async def test_the_coordinator_recreates_its_deleted_consumer(auth_settings: Settings) -> None:
    await set_up(auth_settings)
    async with (
        Services(auth_settings, name="api", role=Role.API) as api,
        Services(auth_settings, name="coordinator", role=Role.COORDINATOR) as services,
        coordinator_for(services, auth_settings) as coordinator,
    ):
        running = asyncio.create_task(coordinator.run())
        try:
            await api.bus.publish(requested("R1"))
            await wait_for(lambda: api.read_models.get_run("R1"), timeout=30, what="R1 in the read models")
            async with setup_bus(auth_settings) as setup:
                await setup.js.delete_consumer(setup.stream, coordinator.durable)
            await api.bus.publish(requested("R2"))
            await wait_for(lambda: api.read_models.get_run("R2"), timeout=30, what="R2 after the re-creation")
            assert await api.bus.consumer_exists(coordinator.durable)
        finally:
            coordinator.stop()
            await asyncio.wait_for(running, 30)


async def test_a_role_cli_exits_non_zero_until_setup_ran(auth_settings: Settings, tmp_path: Path) -> None:
    env = cli_env(
        NATS_URL=str(auth_settings.nats_url),
        DATABASE_URL=str(auth_settings.database_url),
        REDIS_URL=str(auth_settings.redis_url),
        ECHELON_NATS_CREDENTIALS_FILE=str(auth_settings.nats_credentials_file),
        ECHELON_STREAM_NAME=auth_settings.stream_name,
        ECHELON_SUBJECT_ROOT=auth_settings.subject_root,
        ECHELON_CONSUMER_PREFIX=auth_settings.consumer_prefix,
        ECHELON_DATA_DIR=str(tmp_path / "data"),
    )
    worker = await run_cli("worker", "ingest", cwd=tmp_path, env=env, timeout=60)
    assert worker.code == 1
    assert f"stream {auth_settings.stream_name} does not exist" in worker.stderr
    assert "echelon setup" in worker.stderr and "Traceback" not in worker.stderr
    done = await run_cli("setup", cwd=tmp_path, env=env, timeout=60)
    assert done.code == 0, done.stderr
    assert auth_settings.writer_durable(0) in done.stdout
