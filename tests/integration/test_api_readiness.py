"""/readyz on real servers: ready with the writer not started yet, not ready while the read models are being
rebuilt or the single writer is too far behind (NATS outages: tests/integration/test_api_outage.py)."""

from __future__ import annotations

import httpx

from api.app import create_app
from api.options import ApiOptions
from api.readiness import rebuilding_key
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.factories import requested
from tests.integration.test_api_support import app, client, drain, http_client, options, publish, services

__all__ = ["app", "client", "options", "services"]  # fixtures


async def test_ready_before_the_writer_started(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "ready": True,
        "checks": {"nats": "ok", "postgres": "ok", "redis": "ok", "writer": "not started", "read_models": "ok"},
    }


async def test_not_ready_while_read_models_are_rebuilt(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    await services.read_models.redis.set(rebuilding_key(settings), "3/10")
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["read_models"] == "rebuilding 3/10"
    await services.read_models.redis.delete(rebuilding_key(settings))
    assert (await client.get("/readyz")).status_code == 200


async def test_not_ready_while_the_writer_lags_beyond_the_threshold(settings: Settings, services: Services) -> None:
    strict = settings.model_copy(update={"ready_max_lag": 2})
    async with http_client(create_app(strict, services, options=ApiOptions())) as client:
        await publish(services, [requested("LAG0")])
        await drain(services, settings)  # the coordinator's consumer exists and is caught up
        caught_up = await client.get("/readyz")
        assert caught_up.status_code == 200 and caught_up.json()["checks"]["writer"] == "ok"
        await publish(services, [requested(f"LAG{i}") for i in range(1, 4)])
        behind = await client.get("/readyz")
        assert behind.status_code == 503
        assert behind.json()["checks"]["writer"] == "writer lag 3 > 2"
        await drain(services, settings)
        assert (await client.get("/readyz")).status_code == 200
