"""Run routes on real NATS/Postgres/Redis: auth (JWT and real wallet signatures), privacy, idempotency,
rate limiting, pagination, request ids and metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import jwt
from fastapi import FastAPI

from api.app import create_app
from api.options import ApiOptions
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.factories import requested
from tests.integration.test_api_support import (
    API,
    app,
    auth,
    client,
    drain,
    fresh_message,
    http_client,
    new_account,
    options,
    publish,
    signed_in,
    wallet_headers,
    wallet_message,
)

__all__ = ["app", "client", "options"]  # fixtures

RUN = {
    "repo_url": "https://github.com/acme/widgets",
    "construct_id": "oracle-a",
    "oracle_type": "python",
    "oracle_module": "pipeline_workers.oracles.sample",
    "oracle_callable": "summarise",
    "limit": 5,
}


async def test_no_credentials_is_401_with_bearer_challenge(client: httpx.AsyncClient) -> None:
    for response in (await client.get(f"{API}/runs"), await client.post(f"{API}/runs", json=RUN)):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "Authorization: Bearer" in response.json()["detail"]


async def test_bad_tokens_are_401_saying_why(client: httpx.AsyncClient, settings: Settings) -> None:
    secret = settings.jwt_secret.get_secret_value()
    now = datetime.now(UTC)
    cases = {
        "expired": jwt.encode({"sub": "alice", "exp": now - timedelta(minutes=1)}, secret),
        "refresh tokens": jwt.encode({"sub": "alice", "exp": now + timedelta(hours=1), "type": "refresh"}, secret),
        "invalid token": jwt.encode(
            {"sub": "alice", "exp": now + timedelta(hours=1)}, "another-secret-that-is-at-least-32-bytes-long"
        ),
    }
    for why, bad in cases.items():
        response = await client.get(f"{API}/runs", headers={"Authorization": f"Bearer {bad}"})
        assert response.status_code == 401, why
        assert why in response.json()["detail"]


async def test_wallet_with_a_real_signature_creates_and_reads_its_run(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account = new_account()
    created = await client.post(f"{API}/runs", json=RUN, headers=await signed_in(client, settings, account))
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]
    fetched = await client.get(f"{API}/runs/{run_id}", headers=await signed_in(client, settings, account))
    assert fetched.status_code == 200
    assert fetched.json()["construct_id"] == "oracle-a"
    # Another wallet is another user: the run is private.
    other = await signed_in(client, settings, new_account())
    assert (await client.get(f"{API}/runs/{run_id}", headers=other)).status_code == 404


async def test_wallet_forged_stale_replayed_or_unsigned_is_refused(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account, other = new_account(), new_account()
    address = account.address  # type: ignore[attr-defined]
    replayed = await signed_in(client, settings, account)
    assert (await client.get(f"{API}/runs", headers=replayed)).status_code == 200
    nonce = (await client.get("/api/v1/auth/nonce")).json()["nonce"]
    cases = {
        "already used": replayed,
        "signed by another key": wallet_headers(account, wallet_message(settings, address, nonce), signer=other),
        "stale": wallet_headers(
            account, wallet_message(settings, address, nonce, issued=datetime.now(UTC) - timedelta(minutes=6))
        ),
        "unsigned address": {"X-Wallet-Address": address},
        "names a different address": wallet_headers(account, wallet_message(settings, other.address, nonce)),  # type: ignore[attr-defined]
    }
    for why, headers in cases.items():
        response = await client.get(f"{API}/runs", headers=headers)
        assert response.status_code == 401, why
        assert why in response.json()["detail"], (why, response.json())
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_a_forged_attempt_does_not_burn_the_real_nonce(client: httpx.AsyncClient, settings: Settings) -> None:
    account = new_account()
    message = await fresh_message(client, settings, account)
    forged = wallet_headers(account, message, signer=new_account())
    assert (await client.get(f"{API}/runs", headers=forged)).status_code == 401
    genuine = wallet_headers(account, message)
    assert (await client.get(f"{API}/runs", headers=genuine)).status_code == 200


async def test_runs_are_private_and_admins_see_all(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    await publish(services, [requested("RUNA1", "alice"), requested("RUNB1", "bob", "oracle-b")])
    await drain(services, settings)
    alice, bob, admin = auth(settings, "alice"), auth(settings, "bob"), auth(settings, "root", admin=True)
    assert (await client.get(f"{API}/runs/RUNA1", headers=alice)).status_code == 200
    not_yours = await client.get(f"{API}/runs/RUNA1", headers=bob)
    assert not_yours.status_code == 404 and not_yours.json() == {"detail": "run RUNA1 not found"}
    assert (await client.get(f"{API}/runs/NOSUCHRUN", headers=alice)).status_code == 404
    assert [r["run_id"] for r in (await client.get(f"{API}/runs", headers=bob)).json()["runs"]] == ["RUNB1"]
    everyone = (await client.get(f"{API}/runs", headers=admin)).json()
    assert everyone["total"] == 2 and {r["run_id"] for r in everyone["runs"]} == {"RUNA1", "RUNB1"}
    assert (await client.get(f"{API}/runs/RUNA1", headers=admin)).status_code == 200


async def test_run_is_readable_right_after_201_before_projection(client: httpx.AsyncClient, settings: Settings) -> None:
    created = await client.post(f"{API}/runs", json=RUN, headers=auth(settings, "alice"))
    run_id = created.json()["run_id"]
    fetched = await client.get(f"{API}/runs/{run_id}", headers=auth(settings, "alice"))
    assert fetched.status_code == 200 and fetched.json()["status"] == "PENDING"
    assert (await client.get(f"{API}/runs/{run_id}", headers=auth(settings, "bob"))).status_code == 404


async def test_pagination_is_exact_newest_first(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    events = []
    for i in range(7):
        e = requested(f"PAGE{i}", "alice", "oracle-a" if i % 2 else "oracle-b")
        payload = {**e.payload, "created_at": (datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=i)).isoformat()}
        events.append(e.model_copy(update={"payload": payload}))
    await publish(services, events)
    await drain(services, settings)
    alice = auth(settings, "alice")
    pages = []
    for offset in (0, 3, 6):
        body = (await client.get(f"{API}/runs", params={"limit": 3, "offset": offset}, headers=alice)).json()
        assert body["total"] == 7 and body["limit"] == 3 and body["offset"] == offset
        pages.append([r["run_id"] for r in body["runs"]])
    assert pages == [["PAGE6", "PAGE5", "PAGE4"], ["PAGE3", "PAGE2", "PAGE1"], ["PAGE0"]]
    filtered = (await client.get(f"{API}/runs", params={"construct_id": "oracle-a", "limit": 2}, headers=alice)).json()
    assert filtered["total"] == 3 and [r["run_id"] for r in filtered["runs"]] == ["PAGE5", "PAGE3"]


async def test_runs_filter_by_creation_date(client: httpx.AsyncClient, services: Services, settings: Settings) -> None:
    day = datetime(2026, 10, 1, tzinfo=UTC)
    events = []
    for i in range(5):  # one run a day, 1–5 October
        e = requested(f"DATE{i}", "alice", "oracle-a" if i % 2 else "oracle-b")
        payload = {**e.payload, "created_at": (day + timedelta(days=i)).isoformat()}
        events.append(e.model_copy(update={"payload": payload}))
    await publish(services, events)
    await drain(services, settings)
    alice = auth(settings, "alice")

    async def ids(**params: str | int) -> tuple[list[str], int]:
        body = (await client.get(f"{API}/runs", params=params, headers=alice)).json()
        return [r["run_id"] for r in body["runs"]], body["total"]

    after, before = (day + timedelta(days=1)).isoformat(), (day + timedelta(days=4)).isoformat()
    # `created_after` includes its instant, `created_before` excludes its own.
    assert await ids(created_after=after, created_before=before) == (["DATE3", "DATE2", "DATE1"], 3)
    assert await ids(created_after=after, limit=2, offset=2) == (["DATE2", "DATE1"], 4)
    assert await ids(created_before=after) == (["DATE0"], 1)
    assert await ids(created_after=after, construct_id="oracle-a") == (["DATE3", "DATE1"], 2)
    assert await ids(created_after=(day + timedelta(days=9)).isoformat()) == ([], 0)
    naive = await client.get(f"{API}/runs", params={"created_after": "2026-10-02T00:00:00"}, headers=alice)
    assert naive.status_code == 422  # an instant without an offset is ambiguous


async def test_bad_parameters_are_422(client: httpx.AsyncClient, settings: Settings) -> None:
    alice = auth(settings, "alice")
    for params in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"status": "DONE"}, {"limit": "x"}):
        assert (await client.get(f"{API}/runs", params=params, headers=alice)).status_code == 422, params
    bad_bodies = [{**RUN, "limit": 0}, {**RUN, "oracle_type": "http"}, {**RUN, "weights": {"vibes": 1.0}}]
    for body in bad_bodies:
        assert (await client.post(f"{API}/runs", json=body, headers=alice)).status_code == 422, body
    bad_key = await client.post(f"{API}/runs", json=RUN, headers={**alice, "Idempotency-Key": "has space"})
    assert bad_key.status_code == 422


async def test_idempotency_key_returns_the_same_run(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    alice = {**auth(settings, "alice"), "Idempotency-Key": "k-1"}
    first = await client.post(f"{API}/runs", json=RUN, headers=alice)
    again = await client.post(f"{API}/runs", json=RUN, headers=alice)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.json()["created_at"] == first.json()["created_at"]
    # Same key, another user: another run. Same key, another body: refused.
    bob = await client.post(f"{API}/runs", json=RUN, headers={**auth(settings, "bob"), "Idempotency-Key": "k-1"})
    assert bob.status_code == 201 and bob.json()["run_id"] != first.json()["run_id"]
    changed = await client.post(f"{API}/runs", json={**RUN, "limit": 6}, headers=alice)
    assert changed.status_code == 422 and "different request" in changed.json()["detail"]
    await drain(services, settings)
    assert (await services.read_models.list_runs(user_id="alice"))[1] == 1


async def test_concurrent_requests_with_one_key_start_one_run(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    headers = {**auth(settings, "carol"), "Idempotency-Key": "race"}
    responses = await asyncio.gather(*(client.post(f"{API}/runs", json=RUN, headers=headers) for _ in range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["run_id"] for r in responses}) == 1
    await drain(services, settings)
    runs, total = await services.read_models.list_runs(user_id="carol")
    assert total == 1 and runs[0].run_id == responses[0].json()["run_id"]


async def test_rate_limit_is_per_user_with_retry_after(settings: Settings, services: Services) -> None:
    limited_app = create_app(settings, services, options=ApiOptions(runs_per_minute=3))
    async with http_client(limited_app) as client:
        alice = auth(settings, "alice")
        codes = [(await client.post(f"{API}/runs", json=RUN, headers=alice)).status_code for _ in range(3)]
        limited = await client.post(f"{API}/runs", json=RUN, headers=alice)
        assert codes == [201, 201, 201]
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert "at most 3 runs per 60 s" in limited.json()["detail"]
        # Another user has their own budget.
        assert (await client.post(f"{API}/runs", json=RUN, headers=auth(settings, "bob"))).status_code == 201


async def test_rate_limit_is_counted_before_validation(settings: Settings, services: Services) -> None:
    """Validation may wait seconds on DNS: a user over the limit is refused before any of it runs, and
    refused requests (422) count, so nobody can make the API resolve hosts without limit."""
    limited_app = create_app(settings, services, options=ApiOptions(runs_per_minute=2))
    refused = {**RUN, "oracle_callable": "not_allowlisted"}
    async with http_client(limited_app) as client:
        alice = auth(settings, "alice")
        codes = [(await client.post(f"{API}/runs", json=refused, headers=alice)).status_code for _ in range(3)]
        over = await client.post(f"{API}/runs", json=RUN, headers=alice)
    assert codes == [422, 422, 429]
    assert over.status_code == 429


async def test_request_id_is_honoured_or_made_and_metrics_are_exposed(app: FastAPI, settings: Settings) -> None:
    async with http_client(app) as client:
        given = await client.get("/healthz", headers={"X-Request-ID": "req-123"})
        assert given.headers["X-Request-ID"] == "req-123"
        made = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith junk"})
        assert made.headers["X-Request-ID"] != "bad id\twith junk" and len(made.headers["X-Request-ID"]) == 26
        await client.post(f"{API}/runs", json=RUN, headers=auth(settings, "alice"))
        text = (await client.get("/metrics")).text
    assert (
        'echelon_http_request_seconds_count{method="POST",route="/api/v1/verification/runs",status="201"} 1.0' in text
    )
    assert 'echelon_events_published_total{topic="verify.run.requested"} 1.0' in text
    assert "echelon_ws_clients" in text and "echelon_coordinator_lag_events" in text
