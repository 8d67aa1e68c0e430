"""`POST /api/v1/auth/session`: a Sign-In-with-Ethereum proof signed by a real key becomes a short-lived
Bearer token; the proof is verified like the X-Wallet-* headers, so it is single-use and bound to this service."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import jwt

from api.app import create_app
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.integration.test_api_support import (
    API,
    app,
    client,
    fresh_message,
    http_client,
    new_account,
    options,
    sign,
    wallet_message,
)

__all__ = ["app", "client", "options"]  # fixtures

SESSION = "/api/v1/auth/session"


def proof(account: object, message: str, *, signer: object | None = None) -> dict[str, str]:
    return {"address": account.address, "message": message, "signature": sign(signer or account, message)}  # type: ignore[attr-defined]


def claims(settings: Settings, token: str) -> dict[str, object]:
    decoded: dict[str, object] = jwt.decode(token, settings.jwt_secret.get_secret_value(), algorithms=["HS256"])
    return decoded


async def test_a_signed_message_becomes_a_token_that_lists_runs(client: httpx.AsyncClient, settings: Settings) -> None:
    account = new_account()
    body = proof(account, await fresh_message(client, settings, account))
    response = await client.post(SESSION, json=body)
    assert response.status_code == 200, response.text
    session = response.json()
    assert session["user_id"] == f"wallet:{account.address}" and session["admin"] is False  # type: ignore[attr-defined]
    assert response.headers["Cache-Control"] == "no-store"
    issued = claims(settings, session["access_token"])
    assert issued["sub"] == session["user_id"] and "role" not in issued
    assert 3590 <= int(issued["exp"]) - time.time() <= 3600  # type: ignore[call-overload]
    headers = {"Authorization": f"Bearer {session['access_token']}"}
    for _ in range(2):  # unlike the proof itself, the token is reusable until it expires
        runs = await client.get(f"{API}/runs", headers=headers)
        assert runs.status_code == 200, runs.text


async def test_a_proof_gives_one_session_only(client: httpx.AsyncClient, settings: Settings) -> None:
    account = new_account()
    body = proof(account, await fresh_message(client, settings, account))
    assert (await client.post(SESSION, json=body)).status_code == 200
    reused = await client.post(SESSION, json=body)
    assert reused.status_code == 401 and "already used" in reused.json()["detail"]
    assert reused.headers["WWW-Authenticate"] == "Bearer"


async def test_a_message_for_another_domain_or_signer_is_refused_without_burning_the_nonce(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    account = new_account()
    address: str = account.address  # type: ignore[attr-defined]
    nonce = (await client.get("/api/v1/auth/nonce")).json()["nonce"]
    elsewhere = wallet_message(settings, address, nonce, domain="evil.example")
    response = await client.post(SESSION, json=proof(account, elsewhere))
    assert response.status_code == 401 and "another domain" in response.json()["detail"]
    forged = proof(account, wallet_message(settings, address, nonce), signer=new_account())
    response = await client.post(SESSION, json=forged)
    assert response.status_code == 401 and "another key" in response.json()["detail"]
    good = await client.post(SESSION, json=proof(account, wallet_message(settings, address, nonce)))
    assert good.status_code == 200, good.text


async def test_a_malformed_body_is_a_422(client: httpx.AsyncClient) -> None:
    response = await client.post(SESSION, json={"address": "0x00", "message": "hi"})
    assert response.status_code == 422


async def test_an_admin_wallet_gets_the_admin_role_until_the_message_expires(
    settings: Settings, services: Services
) -> None:
    account = new_account()
    address: str = account.address  # type: ignore[attr-defined]
    admin_settings = settings.model_copy(update={"admin_wallets": [address.lower()]})
    async with http_client(create_app(admin_settings, services)) as client:
        nonce = (await client.get("/api/v1/auth/nonce")).json()["nonce"]
        expires = (datetime.now(UTC) + timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
        message = wallet_message(settings, address, nonce, extra=f"\nExpiration Time: {expires}")
        response = await client.post(SESSION, json=proof(account, message))
        assert response.status_code == 200, response.text
        session = response.json()
        issued = claims(settings, session["access_token"])
        assert session["admin"] is True and issued["role"] == "admin"
        # The message said the sign-in lasts 10 minutes: the token does not outlive it.
        assert 590 <= int(issued["exp"]) - time.time() <= 600  # type: ignore[call-overload]
