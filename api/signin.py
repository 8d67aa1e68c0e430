"""`GET /api/v1/auth/nonce`: the server-issued nonce a Sign-In-with-Ethereum message must carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, Response

from api import responses as r
from api.deps import ServicesDep, SettingsDep
from api.limits import RateLimiter
from api.nonces import NonceStore
from api.schemas import NonceIssued

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


@router.get("/nonce", response_model=NonceIssued, responses=r.merge(r.PUBLIC, r.RATE_LIMITED))
async def nonce(request: Request, response: Response, services: ServicesDep, settings: SettingsDep) -> NonceIssued:
    """Public: a fresh single-use nonce for an EIP-4361 message, valid `siwe_nonce_ttl_s` seconds, plus the
    domain, URI and chain ids the message must name. Rate limited per client address: each nonce is state."""
    redis = services.read_models.redis
    limiter = RateLimiter(redis, settings.redis_prefix, limit=settings.siwe_nonces_per_minute, window_s=60)
    await limiter.hit("nonces", request.client.host if request.client else "unknown")
    store = NonceStore(redis, settings.redis_prefix, settings.siwe_nonce_ttl_s)
    value = await store.issue()
    response.headers["Cache-Control"] = "no-store"
    return NonceIssued(
        nonce=value,
        expires_at=datetime.now(UTC) + timedelta(seconds=store.ttl_s),
        domain=settings.siwe_expected_domain(),
        uri=settings.siwe_expected_uri(),
        chain_ids=list(settings.siwe_chain_ids),
    )
