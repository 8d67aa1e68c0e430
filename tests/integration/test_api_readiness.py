"""/readyz on real servers: ready only while the API serves what the log says. Not ready without a read-model
checkpoint, during a rebuild, with the stream or a durable consumer missing, or with the writer stalled (a
table lock) or far behind; and it answers within its deadline whatever hangs (NATS outages:
tests/integration/test_api_outage.py; reads while not ready: tests/integration/test_api_log_reads.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest

from api.app import create_app
from api.options import ApiOptions
from coordinator.admission import TrustedKeys
from coordinator.assembly import coordinator_for
from coordinator.rebuild import Rebuilder
from echelon.embedded import EmbeddedRedis
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.factories import requested
from tests.helpers import certifier_keyring, wait_for
from tests.integration.test_api_support import API, auth, certified_run, drain, http_client, publish

STAGE = "ingest"
READY = {
    "nats": "ok",
    "postgres": "ok",
    "redis": "ok",
    "stream": "ok",
    "consumers": "ok",
    "writer": "ok",
    "read_models": "ok",
}


@pytest.fixture
def ready_settings(settings: Settings) -> Settings:
    """One stage durable is required (besides the writer's): enough to show a missing one is noticed."""
    return settings.model_copy(update={"ready_stages": [STAGE], "ready_max_behind_s": 1.0})


@pytest.fixture
def service_settings(ready_settings: Settings) -> Settings:
    return ready_settings


@pytest.fixture
async def client(ready_settings: Settings, services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(create_app(ready_settings, services, options=ApiOptions())) as c:
        yield c


async def readyz(client: httpx.AsyncClient) -> tuple[int, dict[str, str], float]:
    """One /readyz (status, checks, seconds); a client deadline far beyond the server's own."""
    started = time.monotonic()
    response = await asyncio.wait_for(client.get("/readyz"), 10)
    return response.status_code, response.json()["checks"], time.monotonic() - started


async def make_ready(services: Services, settings: Settings) -> None:
    """What a running service has: the writer's consumer and checkpoint (one drain), the stage's consumer."""
    await publish(services, [requested("READY0")])
    await drain(services, settings)
    stage_filter = services.subjects.topic_filter("verify.run.requested")
    await services.bus.ensure_consumer(f"{settings.consumer_prefix}-{STAGE}", stage_filter)


async def test_not_ready_until_the_read_models_have_a_checkpoint(
    client: httpx.AsyncClient, services: Services, ready_settings: Settings
) -> None:
    code, checks, _ = await readyz(client)
    assert code == 503
    assert checks["read_models"] == "no checkpoint: a rebuild from the log is pending", checks
    assert checks["consumers"].startswith("durable consumers missing: "), checks
    await make_ready(services, ready_settings)
    code, checks, _ = await readyz(client)
    assert (code, checks) == (200, READY)
    # A checkpoint lost on its own (a key evicted or deleted): the writer will rebuild, readiness says so.
    await services.read_models.redis.delete(f"{ready_settings.redis_prefix}checkpoint")
    code, checks, _ = await readyz(client)
    assert code == 503 and checks["read_models"] == "no checkpoint: a rebuild from the log is pending"


async def test_not_ready_while_a_rebuild_runs_even_on_a_small_log(
    client: httpx.AsyncClient, services: Services, ready_settings: Settings
) -> None:
    await make_ready(services, ready_settings)
    events, _ = certified_run("REBUILT", keyring=await certifier_keyring(services.store, ready_settings))
    await publish(services, events)
    await drain(services, ready_settings)
    assert (await readyz(client))[0] == 200
    s = ready_settings
    async with (
        Projector(str(s.redis_url), s.redis_prefix, partitioning=s.partitioning) as blocker,
        Projector(str(s.redis_url), s.redis_prefix, partitioning=s.partitioning) as projector,
    ):
        # The writers' locks held elsewhere: the rebuild folds the log, then waits to switch.
        async with blocker.holding():
            rebuild = asyncio.create_task(
                Rebuilder(services.store, projector, TrustedKeys.published(services.store, services.settings)).rebuild()
            )
            try:
                await wait_for(
                    lambda: services.read_models.redis.exists(f"{s.redis_prefix}rebuilding"),
                    timeout=10,
                    what="the rebuild marker",
                )
                code, checks, _ = await readyz(client)
                assert code == 503 and checks["read_models"].startswith("rebuilding "), checks
                # Meanwhile a run is read from the log, with the projection the models use.
                run = await client.get(f"{API}/runs/REBUILT", headers=auth(s, "alice"))
                assert run.status_code == 200 and run.json()["status"] == "COMPLETED", run.text
            except BaseException:
                rebuild.cancel()
                raise
        await asyncio.wait_for(rebuild, 20)
    code, checks, _ = await readyz(client)
    assert (code, checks) == (200, READY)


async def test_answers_within_its_deadline_under_a_table_lock_and_says_the_writer_stalled(
    client: httpx.AsyncClient, services: Services, ready_settings: Settings
) -> None:
    await make_ready(services, ready_settings)
    assert (await readyz(client))[0] == 200
    locker = await asyncpg.connect(str(ready_settings.database_url))
    blocked: list[asyncio.Task[object]] = []
    try:
        async with coordinator_for(services, ready_settings) as coordinator:
            writer = asyncio.create_task(coordinator.run())
            try:
                tx = locker.transaction()
                await tx.start()
                await locker.execute("LOCK TABLE events")
                # Requests waiting on the lock hold every connection of the API's pool.
                blocked = [
                    asyncio.create_task(services.store.pool.fetchval("SELECT count(*) FROM events")) for _ in range(4)
                ]
                await publish(services, [requested("LOCKED1")])
                slowest = 0.0

                async def stalled() -> bool:
                    nonlocal slowest
                    code, checks, seconds = await readyz(client)
                    slowest = max(slowest, seconds)
                    return code == 503 and checks["writer"].startswith("writer stalled: ")

                await wait_for(stalled, timeout=15, interval=0.2, what="/readyz to say the writer stalled")
                code, checks, seconds = await readyz(client)
                assert code == 503 and checks["postgres"] == "ok", checks
                slowest = max(slowest, seconds)
                # Its own deadline is 1 s (ECHELON_READY_TIMEOUT_S); the margin is for a loaded machine. Before,
                # it waited for a pooled connection until the lock was released.
                assert slowest < 3.0, f"/readyz took {slowest:.2f}s under the lock"
                await tx.rollback()
                await asyncio.wait_for(asyncio.gather(*blocked), 20)
                await wait_for(_ready(client), timeout=20, interval=0.2, what="ready again after the lock")
            finally:
                coordinator.stop()
                await asyncio.wait_for(writer, 20)
    finally:
        for task in blocked:
            task.cancel()
        with contextlib.suppress(Exception):
            await locker.close()


def _ready(client: httpx.AsyncClient) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return (await readyz(client))[0] == 200

    return probe


async def test_not_ready_when_the_stream_or_a_durable_consumer_is_missing(
    client: httpx.AsyncClient, services: Services, ready_settings: Settings
) -> None:
    await make_ready(services, ready_settings)
    assert (await readyz(client))[0] == 200
    js, stream = services.bus.js, services.bus.stream  # this test's connection has no role: unrestricted
    writer, stage = ready_settings.writer_durable(0), f"{ready_settings.consumer_prefix}-{STAGE}"
    await js.delete_consumer(stream, stage)
    code, checks, _ = await readyz(client)
    assert code == 503 and checks["consumers"] == f"durable consumers missing: {stage}", checks
    await js.delete_consumer(stream, writer)
    code, checks, _ = await readyz(client)
    assert code == 503 and checks["consumers"] == f"durable consumers missing: {writer}, {stage}", checks
    await js.delete_stream(stream)
    code, checks, _ = await readyz(client)
    assert code == 503 and checks["stream"] == f"stream {stream} is missing", checks


async def test_not_ready_while_the_writer_lags_beyond_the_threshold(
    ready_settings: Settings, services: Services
) -> None:
    strict = ready_settings.model_copy(update={"ready_max_lag": 2, "ready_max_behind_s": 3600})
    async with http_client(create_app(strict, services, options=ApiOptions())) as client:
        await make_ready(services, strict)
        code, checks, _ = await readyz(client)
        assert code == 200 and checks["writer"] == "ok"
        await publish(services, [requested(f"LAG{i}") for i in range(1, 4)])
        code, checks, _ = await readyz(client)
        assert code == 503 and checks["writer"] == "writer lag 3 > 2"
        await drain(services, strict)
        assert (await readyz(client))[0] == 200


async def test_a_probe_that_hangs_fails_as_timed_out_within_the_deadline(
    ready_settings: Settings, tmp_path: Path
) -> None:
    """Redis stopped with SIGSTOP: connected, never answering. /readyz still answers, naming it."""
    async with EmbeddedRedis(tmp_path / "redis") as redis_server:
        own = ready_settings.model_copy(update={"redis_url": redis_server.url})
        async with (
            Services(own, name="test-readiness-hang") as svc,
            http_client(create_app(own, svc, options=ApiOptions())) as client,
        ):
            await make_ready(svc, own)
            assert (await readyz(client))[0] == 200
            pid = redis_server.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                code, checks, seconds = await readyz(client)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert code == 503, checks
            assert checks["redis"].startswith("timed out: no answer within "), checks
            assert checks["read_models"].startswith("timed out"), checks
            assert checks["postgres"] == "ok" and checks["nats"] == "ok", checks
            assert seconds < 3.0, f"/readyz took {seconds:.2f}s with Redis stopped"  # its deadline is 1 s
