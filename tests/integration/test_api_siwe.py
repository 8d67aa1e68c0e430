"""Sign-In with Ethereum over HTTP with messages signed by real keys: server-issued single-use nonces,
messages bound to this service, free text refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.helpers import wait_for
from tests.integration.test_api_support import (
    API,
    app,
    client,
    fresh_message,
    new_account,
    options,
    wallet_headers,
    wallet_message,
)
from tests.unit.test_auth import high_s, wrong_checksum

__all__ = ["app", "client", "options"]  # fixtures


async def nonce_of(client: httpx.AsyncClient) -> str:
    response = await client.get("/api/v1/auth/nonce")
    assert response.status_code == 200
    return str(response.json()["nonce"])


async def test_the_nonce_route_says_what_to_sign(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.get("/api/v1/auth/nonce")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert (body["domain"], body["uri"], body["chain_ids"], body["version"]) == (
        settings.siwe_expected_domain(),
        settings.siwe_expected_uri(),
        [1],
        "1",
    )
    assert len(body["nonce"]) == 32 and body["nonce"] != await nonce_of(client)
    ttl = datetime.fromisoformat(body["expires_at"]) - datetime.now(UTC)
    assert timedelta(seconds=settings.siwe_nonce_ttl_s - 30) < ttl <= timedelta(seconds=settings.siwe_nonce_ttl_s)


async def test_a_correct_sign_in_works_once(client: httpx.AsyncClient, settings: Settings) -> None:
    account = new_account()
    headers = wallet_headers(account, await fresh_message(client, settings, account))
    first = await client.get(f"{API}/runs", headers=headers)
    assert first.status_code == 200, first.text
    reused = await client.get(f"{API}/runs", headers=headers)
    assert reused.status_code == 401 and "already used" in reused.json()["detail"]


async def test_a_message_for_another_service_or_chain_is_refused(client: httpx.AsyncClient, settings: Settings) -> None:
    """The bug: a SIWE message signed for another domain authenticated here."""
    account = new_account()
    address: str = account.address  # type: ignore[attr-defined]
    cases = {
        "another domain": {"domain": "evil.example"},
        "another service": {"uri": "https://evil.example"},
        "not accepted here": {"chain_id": 5},
    }
    for why, override in cases.items():
        nonce = await nonce_of(client)
        message = wallet_message(settings, address, nonce, **override)  # type: ignore[arg-type]
        response = await client.get(f"{API}/runs", headers=wallet_headers(account, message))
        assert response.status_code == 401, why
        assert why in response.json()["detail"], (why, response.json())
        # Refused before the nonce was consumed: the same nonce still signs in, in a correct message.
        good = await client.get(
            f"{API}/runs", headers=wallet_headers(account, wallet_message(settings, address, nonce))
        )
        assert good.status_code == 200, good.text


async def test_client_chosen_expired_or_stale_nonces_are_refused(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    """The bug: the client chose the nonce; any fresh-looking one was accepted."""
    account = new_account()
    address: str = account.address  # type: ignore[attr-defined]
    invented = wallet_message(settings, address, "a1b2c3d4e5f6a7b8")
    response = await client.get(f"{API}/runs", headers=wallet_headers(account, invented))
    assert response.status_code == 401 and "nonce is unknown, expired or already used" in response.json()["detail"]

    expiring = await nonce_of(client)
    key = f"{settings.redis_prefix}auth:nonce:{expiring}"
    redis = services.read_models.redis
    await redis.pexpire(key, 1)  # its TTL runs out

    async def gone() -> bool:
        return not await redis.exists(key)

    await wait_for(gone, timeout=5, what="the nonce to expire")
    response = await client.get(
        f"{API}/runs", headers=wallet_headers(account, wallet_message(settings, address, expiring))
    )
    assert response.status_code == 401 and "nonce is unknown, expired" in response.json()["detail"]

    old = wallet_message(settings, address, await nonce_of(client), issued=datetime.now(UTC) - timedelta(minutes=6))
    response = await client.get(f"{API}/runs", headers=wallet_headers(account, old))
    assert response.status_code == 401 and "stale" in response.json()["detail"]


async def test_free_text_with_nonce_and_issued_at_lines_is_refused(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The bug: a "marketplace login" text with `Nonce:` and `Issued At:` lines authenticated."""
    account = new_account()
    when = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    text = f"Log in to the marketplace\nNonce: {await nonce_of(client)}\nIssued At: {when}"
    response = await client.get(f"{API}/runs", headers=wallet_headers(account, text))
    assert response.status_code == 401 and "not an EIP-4361" in response.json()["detail"]


async def test_a_wrong_checksum_high_s_or_control_character_is_refused_over_http(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Each refused before the nonce is used: the same nonce then signs in with a correct proof."""
    account = new_account()
    address: str = account.address  # type: ignore[attr-defined]
    nonce = await nonce_of(client)
    message = wallet_message(settings, address, nonce)
    wrong_case = {**wallet_headers(account, message), "X-Wallet-Address": wrong_checksum(address)}
    twin = wallet_headers(account, message)
    twin["X-Wallet-Signature"] = high_s(twin["X-Wallet-Signature"])
    escaped = wallet_message(settings, address, nonce, extra="\nResources:\n- https://a.example/\x1b[8m")
    for why, headers in (
        ("wrong EIP-55 checksum", wrong_case),
        ("high s", twin),
        ("control or non-ASCII", wallet_headers(account, escaped)),
    ):
        refused = await client.get(f"{API}/runs", headers=headers)
        assert refused.status_code == 401 and why in refused.json()["detail"], (why, refused.text)
    assert (await client.get(f"{API}/runs", headers=wallet_headers(account, message))).status_code == 200
