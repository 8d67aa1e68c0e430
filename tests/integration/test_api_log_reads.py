"""Reads while the read models are not level with the log, on a Redis of the test's own (FLUSHALL, restarts,
NATS down too): a run and its certificate are answered from the event log, never a stale PENDING or a 404 for
what the log holds; when the log does not answer either, a 503 with Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from api.app import create_app
from api.options import ApiOptions
from coordinator.admission import TrustedKeys
from coordinator.rebuild import Rebuilder
from echelon.embedded import EmbeddedNats, EmbeddedRedis
from echelon.embedded._process import free_port
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.errors import ReadModelsStale
from tests.helpers import certifier_keyring, wait_for
from tests.integration.test_api_support import API, auth, certified_run, drain, http_client, publish


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    async with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def own_settings(settings: Settings, own_redis: EmbeddedRedis) -> Settings:
    return settings.model_copy(update={"redis_url": own_redis.url})


@pytest.fixture
def service_settings(own_settings: Settings) -> Settings:
    return own_settings


@pytest.fixture
async def client(own_settings: Settings, services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(create_app(own_settings, services, options=ApiOptions())) as c:
        yield c


async def completed(services: Services, settings: Settings, run_id: str) -> str:
    """A run logged and projected to COMPLETED; returns its certificate id."""
    events, cert = certified_run(run_id, keyring=await certifier_keyring(services.store, settings))
    await publish(services, events)
    await drain(services, settings)
    return cert.certificate_id


async def test_after_flushall_a_completed_run_and_its_certificate_are_read_from_the_log(
    client: httpx.AsyncClient, services: Services, own_settings: Settings
) -> None:
    alice = auth(own_settings, "alice")
    cert_id = await completed(services, own_settings, "FLUSHED")
    before = await client.get(f"{API}/runs/FLUSHED", headers=alice)
    assert before.status_code == 200 and before.json()["status"] == "COMPLETED"
    certificate = (await client.get(f"{API}/certificates/{cert_id}")).json()
    await services.read_models.redis.flushall()
    # No writer has rebuilt anything yet: every answer comes from the log.
    run = await client.get(f"{API}/runs/FLUSHED", headers=alice)
    assert run.status_code == 200, run.text
    assert run.json() == before.json()
    cert = await client.get(f"{API}/certificates/{cert_id}")
    assert cert.status_code == 200 and cert.json() == certificate
    verified = await client.get(f"{API}/certificates/{cert_id}/verify")
    assert verified.status_code == 200 and verified.json()["hash_ok"] is True
    # Still private, still unknown when the log has no such thing.
    assert (await client.get(f"{API}/runs/FLUSHED", headers=auth(own_settings, "mallory"))).status_code == 404
    assert (await client.get(f"{API}/runs/NEVERLOGGED", headers=alice)).status_code == 404
    assert (await client.get(f"{API}/certificates/cert-NEVERLOGGED")).status_code == 404
    assert (await client.get("/readyz")).status_code == 503
    # Once the writer rebuilt the models, they answer again.
    await drain(services, own_settings)
    again = await client.get(f"{API}/runs/FLUSHED", headers=alice)
    assert again.status_code == 200 and again.json() == before.json()


async def test_after_a_redis_restart_empty_the_run_is_read_from_the_log(
    client: httpx.AsyncClient, services: Services, own_settings: Settings, own_redis: EmbeddedRedis
) -> None:
    alice = auth(own_settings, "alice")
    await completed(services, own_settings, "RESTARTED")
    await own_redis.stop()
    await own_redis.start()  # no persistence: it comes back empty
    run = await client.get(f"{API}/runs/RESTARTED", headers=alice)
    assert run.status_code == 200 and run.json()["status"] == "COMPLETED", run.text


async def test_when_neither_the_models_nor_the_log_answer_a_read_is_503_with_retry_after(
    client: httpx.AsyncClient, services: Services, own_settings: Settings
) -> None:
    alice = auth(own_settings, "alice")
    cert_id = await completed(services, own_settings, "LOCKEDOUT")
    await services.read_models.redis.flushall()
    locker = await asyncpg.connect(str(own_settings.database_url))
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE events")
            run = await asyncio.wait_for(client.get(f"{API}/runs/LOCKEDOUT", headers=alice), 15)
            assert run.status_code == 503, run.text
            assert run.headers["Retry-After"] == "1"
            cert = await asyncio.wait_for(client.get(f"{API}/certificates/{cert_id}"), 15)
            assert cert.status_code == 503 and cert.headers["Retry-After"] == "1"
    finally:
        await locker.close()
    run = await client.get(f"{API}/runs/LOCKEDOUT", headers=alice)
    assert run.status_code == 200 and run.json()["status"] == "COMPLETED"


async def test_a_rebuild_whose_work_redis_lost_never_becomes_current(
    client: httpx.AsyncClient, services: Services, own_settings: Settings
) -> None:
    """FLUSHALL while a rebuild runs: switching to what is left would make partial models current (a run
    missing from them reads PENDING). The switch refuses; the writer rebuilds again."""
    alice = auth(own_settings, "alice")
    await completed(services, own_settings, "HALFWAY")
    s = own_settings
    redis = services.read_models.redis
    async with (
        Projector(str(s.redis_url), s.redis_prefix, partitioning=s.partitioning) as blocker,
        Projector(str(s.redis_url), s.redis_prefix, partitioning=s.partitioning) as projector,
    ):
        async with blocker.holding():  # the rebuild folds and writes, then waits to switch
            rebuild = asyncio.create_task(
                Rebuilder(services.store, projector, TrustedKeys.published(services.store, services.settings)).rebuild()
            )
            try:
                await wait_for(lambda: redis.exists(f"{s.redis_prefix}rebuilding"), timeout=10, what="the marker")
                await wait_for(lambda: redis.keys(f"{s.redis_prefix}r*:run:HALFWAY"), timeout=10, what="the write")
                await redis.flushall()
            except BaseException:
                rebuild.cancel()
                raise
        with pytest.raises(ReadModelsStale):
            await asyncio.wait_for(rebuild, 20)
    assert await redis.get(f"{s.redis_prefix}checkpoint") is None  # still not ready: nothing was switched
    run = await client.get(f"{API}/runs/HALFWAY", headers=alice)
    assert run.status_code == 200 and run.json()["status"] == "COMPLETED", run.text
    await drain(services, own_settings)  # the writer rebuilds for good
    assert (await client.get("/readyz")).json()["checks"]["read_models"] == "ok"
    run = await client.get(f"{API}/runs/HALFWAY", headers=alice)
    assert run.status_code == 200 and run.json()["status"] == "COMPLETED", run.text


async def test_with_nats_down_too_a_completed_run_is_read_from_the_log(own_settings: Settings, tmp_path: Path) -> None:
    """Redis flushed and NATS down at once: the stream cannot stand in, the log still answers."""
    async with EmbeddedNats(tmp_path / "nats", port=free_port()) as nats_server:
        own = own_settings.model_copy(update={"nats_url": nats_server.url})
        async with (
            Services(own, name="test-log-reads-no-nats", buffer_while_reconnecting=False) as svc,
            http_client(create_app(own, svc, options=ApiOptions())) as client,
        ):
            cert_id = await completed(svc, own, "NONATS")
            await svc.read_models.redis.flushall()
            await nats_server.stop()
            await wait_for(lambda: not svc.bus.connected, timeout=10, what="the client to notice the outage")
            try:
                run = await client.get(f"{API}/runs/NONATS", headers=auth(own, "alice"))
                assert run.status_code == 200 and run.json()["status"] == "COMPLETED", run.text
                assert (await client.get(f"{API}/certificates/{cert_id}")).status_code == 200
            finally:
                await nats_server.start()
                await wait_for(lambda: svc.bus.connected, timeout=20, what="the client to reconnect")
