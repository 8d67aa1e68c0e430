"""Per-address limits count the real peer: forwarded headers only from ECHELON_TRUSTED_PROXIES, and a global
cap on outstanding sign-in nonces. Served by a real uvicorn configured the way `echelon api` / `stack up` are."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn

from api.app import create_app
from echelon.http_server import api_server_config
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.helpers import wait_for
from tests.integration.test_api_support import (
    API,
    free_port,
    http_client,
    new_account,
    options,
    wallet_headers,
    wallet_message,
)

__all__ = ["options"]  # fixtures


@asynccontextmanager
async def served(settings: Settings, services: Services) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": free_port()})
    server = uvicorn.Server(api_server_config(create_app(settings, services), settings, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), timeout=10, what="uvicorn to start")
        assert not task.done(), "uvicorn exited at start-up"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.api_port}") as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def nonce_statuses(client: httpx.AsyncClient, count: int) -> Counter[int]:
    """`count` nonce requests from loopback, each claiming another client address in X-Forwarded-For."""
    statuses: Counter[int] = Counter()
    for i in range(count):
        forwarded = f"198.51.{i // 250}.{i % 250 + 1}"
        response = await client.get("/api/v1/auth/nonce", headers={"X-Forwarded-For": forwarded})
        statuses[response.status_code] += 1
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
    return statuses


async def test_x_forwarded_for_from_loopback_does_not_change_the_client_address(
    settings: Settings, services: Services
) -> None:
    """The bug: uvicorn believed X-Forwarded-For from loopback, so 300 of 300 nonces with varied headers passed
    a limit of 60 per address."""
    assert settings.trusted_proxies == []  # the default: no proxy is trusted
    async with served(settings, services) as client:
        statuses = await nonce_statuses(client, 300)
    assert statuses == {200: settings.siwe_nonces_per_minute, 429: 300 - settings.siwe_nonces_per_minute}


async def test_a_configured_proxy_is_believed(settings: Settings, services: Services) -> None:
    trusting = settings.model_copy(update={"trusted_proxies": ["127.0.0.0/8"], "siwe_nonces_per_minute": 5})
    async with served(trusting, services) as client:
        statuses = await nonce_statuses(client, 20)
        assert statuses == {200: 20}  # twenty client addresses, one nonce each
        same = [await client.get("/api/v1/auth/nonce", headers={"X-Forwarded-For": "203.0.113.7"}) for _ in range(6)]
    assert [r.status_code for r in same] == [200] * 5 + [429]


async def test_outstanding_nonces_have_a_global_cap(settings: Settings, services: Services) -> None:
    """Nonces used to be issued without bound (344 live from one machine): now at most the cap are outstanding."""
    capped = settings.model_copy(update={"siwe_max_outstanding_nonces": 5, "siwe_nonces_per_minute": 1000})
    async with http_client(create_app(capped, services)) as client:
        nonces = [(await client.get("/api/v1/auth/nonce")).json()["nonce"] for _ in range(5)]
        full = await client.get("/api/v1/auth/nonce")
        assert full.status_code == 429, full.text
        assert 1 <= int(full.headers["Retry-After"]) <= capped.siwe_nonce_ttl_s
        assert "sign-ins in progress" in full.json()["detail"]
        # Using a nonce frees its place; a refused request issued nothing.
        account = new_account()
        message = wallet_message(capped, account.address, nonces[0])  # type: ignore[attr-defined]
        signed_in = await client.get(f"{API}/runs", headers=wallet_headers(account, message))
        assert signed_in.status_code == 200, signed_in.text
        assert (await client.get("/api/v1/auth/nonce")).status_code == 200
        assert (await client.get("/api/v1/auth/nonce")).status_code == 429
