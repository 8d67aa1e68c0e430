"""Sign-In with Ethereum routes: `GET /api/v1/auth/nonce` (the nonce a message must carry) and
`POST /api/v1/auth/session` (a verified wallet proof → a short-lived access token).

The session exchange exists for browsers: a wallet proof is single-use (its nonce is consumed), so a page
would otherwise ask the wallet to sign before every request. The proof is checked by the same code as the
X-Wallet-* headers (`authenticate_wallet`: grammar, binding to this service, freshness, signature, then the
nonce consumed), and the answer is an ordinary Bearer JWT, so every route and the WebSocket accept it.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api import responses as r
from api.auth import authenticate_wallet
from api.deps import ApiKeysDep, SettingsDep
from api.schemas import NonceIssued
from api.tokens import issue_jwt
from api.wallet import MAX_MESSAGE_CHARS, WalletProof

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

SESSION_TTL_S = 3600  # a browser session; the wallet signs again after it


class WalletSignIn(BaseModel):
    """The wallet proof, as JSON: the message is the exact signed text (not base64, unlike X-Wallet-Message)."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(max_length=42, description="the signer's Ethereum address (0x…, EIP-55 or all lower case)")
    message: str = Field(
        max_length=MAX_MESSAGE_CHARS,
        description="the exact EIP-4361 text that was signed, naming a nonce from GET /api/v1/auth/nonce",
    )
    signature: str = Field(max_length=140, description="EIP-191 personal_sign signature: 65 bytes as 0x hex")


class SessionIssued(BaseModel):
    """An access token for the wallet's user: send it as `Authorization: Bearer <access_token>`."""

    access_token: str
    token_type: str = "bearer"
    expires_at: datetime = Field(description="the token's `exp`: sign in with the wallet again after it")
    user_id: str = Field(description="`wallet:<EIP-55 address>`")
    admin: bool = Field(description="the address is in ECHELON_ADMIN_WALLETS")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/nonce", response_model=NonceIssued, responses=r.merge(r.PUBLIC, r.RATE_LIMITED))
async def nonce(request: Request, response: Response, api_keys: ApiKeysDep, settings: SettingsDep) -> NonceIssued:
    """Public: a fresh single-use nonce for an EIP-4361 message, valid `siwe_nonce_ttl_s` seconds, plus the
    domain, URI and chain ids the message must name. Rate limited per client address: each nonce is state."""
    limiter = api_keys.rate_limiter(limit=settings.siwe_nonces_per_minute, window_s=60)
    await limiter.hit("nonces", _client(request))
    store = api_keys.nonces(settings.siwe_nonce_ttl_s, max_outstanding=settings.siwe_max_outstanding_nonces)
    value = await store.issue()
    response.headers["Cache-Control"] = "no-store"
    return NonceIssued(
        nonce=value,
        expires_at=datetime.now(UTC) + timedelta(seconds=store.ttl_s),
        domain=settings.siwe_expected_domain(),
        uri=settings.siwe_expected_uri(),
        chain_ids=list(settings.siwe_chain_ids),
    )


@router.post(
    "/session",
    response_model=SessionIssued,
    responses=r.merge(r.UNAUTHORIZED, r.PUBLIC, r.RATE_LIMITED, r.MALFORMED_BODY),
)
async def session(
    body: WalletSignIn, request: Request, response: Response, api_keys: ApiKeysDep, settings: SettingsDep
) -> SessionIssued:
    """Public: exchange a signed Sign-In-with-Ethereum message for a Bearer token valid up to an hour (never
    past the message's `Expiration Time`). Verified like the X-Wallet-* headers, so the nonce is used up:
    the same proof gives 401 the second time. Rate limited per client address, like the nonces."""
    limiter = api_keys.rate_limiter(limit=settings.siwe_nonces_per_minute, window_s=60)
    await limiter.hit("sessions", _client(request))
    proof = WalletProof(address=body.address, message=body.message, signature=body.signature)
    principal = await authenticate_wallet(proof, settings, api_keys.nonces(settings.siwe_nonce_ttl_s))
    ttl_s = SESSION_TTL_S
    if principal.expires_at is not None:  # verify_proof refused a message that has expired already
        ttl_s = max(1, min(ttl_s, math.floor(principal.expires_at - time.time())))
    token = issue_jwt(
        principal.user_id,
        settings.jwt_secret.get_secret_value(),
        admin=principal.is_admin,
        ttl_s=ttl_s,
        algorithm=settings.jwt_algorithm,
        wallet_sign_in=True,  # the only place a token for a `wallet:` user is minted
    )
    response.headers["Cache-Control"] = "no-store"
    return SessionIssued(
        access_token=token,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl_s),
        user_id=principal.user_id,
        admin=principal.is_admin,
    )
