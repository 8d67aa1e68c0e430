"""Server-issued, single-use Sign-In-with-Ethereum nonces, kept in Redis with a TTL.

Auth state, not domain state: losing the keys (a flush) only makes sign-ins in flight retry with a new
nonce. A nonce is consumed with one DEL, so two requests with the same signed message cannot both win.
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis
import redis.exceptions

from echelon_platform.errors import AuthError, ReadModelError

NONCE_BYTES = 16  # 32 hex characters: EIP-4361 asks for at least 8 alphanumerics


class NonceStore:
    def __init__(self, redis: aioredis.Redis, prefix: str, ttl_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self.ttl_s = ttl_s

    def _key(self, nonce: str) -> str:
        return f"{self._prefix}auth:nonce:{nonce}"

    async def issue(self) -> str:
        nonce = secrets.token_hex(NONCE_BYTES)
        try:
            await self._redis.set(self._key(nonce), b"1", ex=self.ttl_s)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"cannot store the sign-in nonce: {exc}") from exc
        return nonce

    async def consume(self, nonce: str) -> None:
        """Use the nonce up; AuthError when it was never issued here, expired or was used already."""
        try:
            removed = await self._redis.delete(self._key(nonce))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"cannot check the sign-in nonce: {exc}") from exc
        if not removed:
            raise AuthError(
                "wallet message nonce is unknown, expired or already used: "
                "get a new one from GET /api/v1/auth/nonce and sign a new message"
            )
