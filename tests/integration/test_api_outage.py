"""A NATS outage under a running API, on a dedicated embedded NATS we stop and start: a POST fails fast with
503, and a 503 never turns into a run later (nats-py must not replay a buffered publish on reconnect)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.options import ApiOptions
from echelon.embedded import EmbeddedNats
from echelon.embedded._process import free_port
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.helpers import wait_for
from tests.integration.test_api_runs import RUN
from tests.integration.test_api_support import API, auth, drain, http_client


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path / "nats", port=free_port()) as server:
        yield server


@pytest.fixture
async def outage_services(settings: Settings, nats_server: EmbeddedNats) -> AsyncIterator[Services]:
    own = settings.model_copy(update={"nats_url": nats_server.url, "ready_stages": []})
    # As the API builds its own Services (api/app.py): no reconnect buffering.
    async with Services(own, name="test-api-outage", buffer_while_reconnecting=False) as svc:
        yield svc


@pytest.fixture
async def outage_client(settings: Settings, outage_services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(outage_services.settings, outage_services, options=ApiOptions(runs_per_minute=1000))
    async with http_client(app) as client:
        yield client


async def requested_in_stream(services: Services) -> int:
    """How many run requests the stream holds (JetStream's own count, after a round trip)."""
    await services.bus.nc.flush(timeout=5)
    info = await services.bus.js.stream_info(
        services.bus.stream, subjects_filter=services.subjects.topic_filter("verify.run.requested")
    )
    return sum((info.state.subjects or {}).values())


async def stop_nats(server: EmbeddedNats, services: Services) -> None:
    await server.stop()
    await wait_for(lambda: not services.bus.connected, timeout=10, what="the client to notice the outage")


async def start_nats(server: EmbeddedNats, services: Services) -> None:
    await server.start()
    await wait_for(lambda: services.bus.connected, timeout=20, what="the client to reconnect")


async def test_post_during_an_outage_is_a_fast_503_and_never_stored_later(
    nats_server: EmbeddedNats, outage_services: Services, outage_client: httpx.AsyncClient, settings: Settings
) -> None:
    alice = auth(settings, "alice")
    await stop_nats(nats_server, outage_services)
    for headers in (alice, {**alice, "Idempotency-Key": "during-outage"}):
        started = time.monotonic()
        response = await outage_client.post(f"{API}/runs", json=RUN, headers=headers)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert elapsed < 2.0, f"503 took {elapsed:.2f}s"
    await start_nats(nats_server, outage_services)
    # Reconnecting flushes nats-py's pending buffer before the client reports "connected"; one more round
    # trip and anything that was buffered is in the stream.
    assert await requested_in_stream(outage_services) == 0


async def test_a_retry_after_a_503_with_the_same_key_starts_exactly_one_run(
    nats_server: EmbeddedNats, outage_services: Services, outage_client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = {**auth(settings, "alice"), "Idempotency-Key": "retry-me"}
    await stop_nats(nats_server, outage_services)
    assert (await outage_client.post(f"{API}/runs", json=RUN, headers=headers)).status_code == 503
    await start_nats(nats_server, outage_services)
    retried = await outage_client.post(f"{API}/runs", json=RUN, headers=headers)
    assert retried.status_code == 201, retried.text
    again = await outage_client.post(f"{API}/runs", json=RUN, headers=headers)
    assert again.status_code == 200 and again.json()["run_id"] == retried.json()["run_id"]
    assert again.json()["created_at"] == retried.json()["created_at"]
    assert await requested_in_stream(outage_services) == 1


async def test_a_refused_post_leaves_no_run_in_the_list(
    nats_server: EmbeddedNats, outage_services: Services, outage_client: httpx.AsyncClient, settings: Settings
) -> None:
    """The list's read-your-writes note is taken with the rate limit, before publishing: a 503 must drop it."""
    alice = auth(settings, "alice")
    await stop_nats(nats_server, outage_services)
    assert (await outage_client.post(f"{API}/runs", json=RUN, headers=alice)).status_code == 503
    redis = outage_services.read_models.redis
    notes = await redis.keys(f"{outage_services.settings.redis_prefix}recent:runs:*")
    assert [await redis.zcard(key) for key in notes] in ([], [0])
    await start_nats(nats_server, outage_services)
    assert (await outage_client.get(f"{API}/runs", headers=alice)).json()["total"] == 0


async def test_readyz_names_nats_while_it_is_down(
    nats_server: EmbeddedNats, outage_services: Services, outage_client: httpx.AsyncClient
) -> None:
    # Ready: the writer ran (its consumer and the read models' checkpoint exist); no stage is required here.
    await drain(outage_services, outage_services.settings)
    assert (await outage_client.get("/readyz")).status_code == 200
    await stop_nats(nats_server, outage_services)
    started = time.monotonic()
    down = await outage_client.get("/readyz")
    assert time.monotonic() - started < 2.0
    assert down.status_code == 503
    body = down.json()
    assert body["ready"] is False and body["checks"]["nats"].startswith("unreachable")
    assert body["checks"]["postgres"] == "ok" and body["checks"]["redis"] == "ok"
    await start_nats(nats_server, outage_services)
    assert (await outage_client.get("/readyz")).status_code == 200
