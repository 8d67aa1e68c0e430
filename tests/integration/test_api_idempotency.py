"""Idempotency-Key without Redis state, rate limits that replays do not consume, and the run list showing a
run right after its 201 (no coordinator runs in these tests, so the read model never has it)."""

from __future__ import annotations

import httpx
import redis.asyncio as aioredis

from api.app import create_app
from api.options import ApiOptions
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.integration.test_api_runs import RUN
from tests.integration.test_api_support import API, app, auth, client, drain, http_client, options

__all__ = ["app", "client", "options"]  # fixtures


async def requested_in_stream(services: Services) -> int:
    info = await services.bus.js.stream_info(
        services.bus.stream, subjects_filter=services.subjects.topic_filter("verify.run.requested")
    )
    return sum((info.state.subjects or {}).values())


async def flush_redis(services: Services, settings: Settings) -> None:
    """Everything the app keeps in Redis is under its prefix; drop all of it (FLUSHALL, minus other tests)."""
    redis: aioredis.Redis = services.read_models.redis
    keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}*", count=1000)]
    assert keys, "the first request left nothing in Redis to flush"
    await redis.unlink(*keys)


async def test_a_used_key_names_the_same_run_after_redis_is_flushed(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    alice = {**auth(settings, "alice"), "Idempotency-Key": "flush-me"}
    first = await client.post(f"{API}/runs", json=RUN, headers=alice)
    assert first.status_code == 201, first.text
    await flush_redis(services, settings)
    again = await client.post(f"{API}/runs", json=RUN, headers=alice)
    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "status": "PENDING"}
    changed = await client.post(f"{API}/runs", json={**RUN, "limit": 6}, headers=alice)
    assert changed.status_code == 422 and "different request" in changed.json()["detail"]
    assert await requested_in_stream(services) == 1


async def test_a_used_key_is_found_in_the_log_once_the_stream_forgot_it(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    alice = {**auth(settings, "alice"), "Idempotency-Key": "old-key"}
    first = await client.post(f"{API}/runs", json=RUN, headers=alice)
    await drain(services, settings)  # the coordinator stored it in Postgres
    await services.bus.js.purge_stream(services.bus.stream)  # as max_age would, after 30 days
    await flush_redis(services, settings)
    again = await client.post(f"{API}/runs", json=RUN, headers=alice)
    assert again.status_code == 200 and again.json()["run_id"] == first.json()["run_id"]
    assert await requested_in_stream(services) == 0


async def test_replaying_a_known_key_does_not_consume_the_rate_limit(settings: Settings, services: Services) -> None:
    async with http_client(create_app(settings, services, options=ApiOptions(runs_per_minute=2))) as client:
        alice = auth(settings, "alice")
        keyed = {**alice, "Idempotency-Key": "replayed"}
        assert (await client.post(f"{API}/runs", json=RUN, headers=keyed)).status_code == 201
        for _ in range(3):
            assert (await client.post(f"{API}/runs", json=RUN, headers=keyed)).status_code == 200
        assert (await client.post(f"{API}/runs", json=RUN, headers=alice)).status_code == 201
        assert (await client.post(f"{API}/runs", json=RUN, headers=alice)).status_code == 429


async def test_the_list_shows_a_run_right_after_its_201(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    alice = auth(settings, "alice")
    created = (await client.post(f"{API}/runs", json=RUN, headers=alice)).json()
    listed = (await client.get(f"{API}/runs", headers=alice)).json()
    assert listed["total"] == 1
    assert [(r["run_id"], r["status"]) for r in listed["runs"]] == [(created["run_id"], "PENDING")]
    # Filters apply to it; other users do not see it.
    assert (await client.get(f"{API}/runs", params={"status": "COMPLETED"}, headers=alice)).json()["runs"] == []
    assert (await client.get(f"{API}/runs", params={"construct_id": "x"}, headers=alice)).json()["total"] == 0
    assert (await client.get(f"{API}/runs", headers=auth(settings, "bob"))).json()["total"] == 0
    # Once projected it is listed once, from the read model.
    await drain(services, settings)
    projected = (await client.get(f"{API}/runs", headers=alice)).json()
    assert projected["total"] == 1 and [r["run_id"] for r in projected["runs"]] == [created["run_id"]]
