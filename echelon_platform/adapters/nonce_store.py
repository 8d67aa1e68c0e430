"""Server-issued, single-use Sign-In-with-Ethereum nonces, kept in Redis with a TTL.

Auth state, not domain state: losing the keys (a flush) only makes sign-ins in flight retry with a new
nonce. A nonce is consumed with one DEL, so two requests with the same signed message cannot both win.

Every nonce is state, so besides the per-address limit of the route there is a global cap on outstanding
nonces (issued, neither used nor expired): an index of them by expiry is trimmed and counted in the same
script that issues one, and when it is full the caller is told when the oldest expires (429, Retry-After).
"""

from __future__ import annotations

import hashlib
import math
import secrets

import redis.asyncio as aioredis
import redis.exceptions

from echelon_platform.adapters.rate_limits import run_script
from echelon_platform.errors import AuthError, RateLimited, ReadModelError

NONCE_BYTES = 16  # 32 hex characters: EIP-4361 asks for at least 8 alphanumerics
DEFAULT_MAX_OUTSTANDING = 10_000

# KEYS: the index (zset nonce → expiry ms), the nonce's key. ARGV: cap, ttl ms, nonce. Answers -1 when
# issued, else the ms until the oldest outstanding nonce expires.
_ISSUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(0, tonumber(oldest[2]) - now)
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], '1', 'PX', ttl)
return -1
"""
_ISSUE_SHA = hashlib.sha1(_ISSUE.encode()).hexdigest()


class NonceStore:
    def __init__(
        self, redis: aioredis.Redis, prefix: str, ttl_s: int, *, max_outstanding: int = DEFAULT_MAX_OUTSTANDING
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self.ttl_s = ttl_s
        self.max_outstanding = max_outstanding
        self._index = f"{prefix}auth:nonces"

    def _key(self, nonce: str) -> str:
        return f"{self._prefix}auth:nonce:{nonce}"

    async def issue(self) -> str:
        """A new nonce; RateLimited (→ 429 with Retry-After) when `max_outstanding` are outstanding already."""
        nonce = secrets.token_hex(NONCE_BYTES)
        keys = (self._index, self._key(nonce))
        try:
            args = (self.max_outstanding, self.ttl_s * 1000, nonce)
            wait_ms = int(await run_script(self._redis, _ISSUE, _ISSUE_SHA, keys, args))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"cannot store the sign-in nonce: {exc}") from exc
        if wait_ms >= 0:
            retry_after = max(1, math.ceil(wait_ms / 1000))
            raise RateLimited(
                f"too many sign-ins in progress ({self.max_outstanding} unused nonces); retry in {retry_after} s",
                retry_after=retry_after,
            )
        return nonce

    async def consume(self, nonce: str) -> None:
        """Use the nonce up; AuthError when it was never issued here, expired or was used already."""
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(nonce))
                pipe.zrem(self._index, nonce)
                removed, _ = await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"cannot check the sign-in nonce: {exc}") from exc
        if not removed:
            raise AuthError(
                "wallet message nonce is unknown, expired or already used: "
                "get a new one from GET /api/v1/auth/nonce and sign a new message"
            )
