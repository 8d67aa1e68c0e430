"""Per-user request state in Redis: a sliding-window rate limit and `Idempotency-Key` records.

This is request bookkeeping under `settings.redis_prefix`, not domain state: losing it can only let a
request through twice (the second run is then an ordinary new run), never corrupt a read model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from ulid import ULID

from echelon_platform.errors import RateLimited, ReadModelError

# Sliding window log: timestamps (server clock, so several API processes agree) of the calls in the window.
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window - now
"""

# Delete only our own claim (its run id), never a newer request's.
_RELEASE = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['run_id'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, prefix: str, *, limit: int, window_s: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self.limit = limit
        self.window_ms = int(window_s * 1000)

    async def hit(self, scope: str, user_id: str) -> None:
        """Count one call; RateLimited (→ 429 with Retry-After) when the window is already full."""
        key = f"{self._prefix}ratelimit:{scope}:{_digest(user_id)}"
        try:
            wait_ms = int(await self._redis.eval(_SLIDING_WINDOW, 1, key, self.limit, self.window_ms, str(ULID())))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"rate limiter unavailable: {exc}") from exc
        if wait_ms >= 0:
            retry_after = max(1, math.ceil(wait_ms / 1000))
            raise RateLimited(
                f"rate limit: at most {self.limit} {scope} per {self.window_ms // 1000} s per user; "
                f"retry in {retry_after} s",
                retry_after=retry_after,
            )


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    run_id: str
    created_at: datetime
    fingerprint: str
    done: bool

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"run_id": self.run_id, "created_at": self.created_at, "fingerprint": self.fingerprint, "done": self.done}
        )

    @classmethod
    def from_json(cls, raw: bytes) -> IdempotencyRecord:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(
            run_id=data["run_id"],
            created_at=datetime.fromisoformat(data["created_at"]),
            fingerprint=data["fingerprint"],
            done=bool(data["done"]),
        )


class IdempotencyStore:
    """(user, Idempotency-Key) → the run it started. `claim` is SET NX, so concurrent requests agree."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *, ttl_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self.ttl_s = ttl_s

    def _key(self, user_id: str, key: str) -> str:
        return f"{self._prefix}idem:runs:{_digest(user_id, key)}"

    async def get(self, user_id: str, key: str) -> IdempotencyRecord | None:
        raw = await self._call(self._redis.get(self._key(user_id, key)))
        return IdempotencyRecord.from_json(raw) if raw else None

    async def claim(self, user_id: str, key: str, record: IdempotencyRecord) -> bool:
        return bool(
            await self._call(self._redis.set(self._key(user_id, key), record.to_json(), nx=True, ex=self.ttl_s))
        )

    async def complete(self, user_id: str, key: str, record: IdempotencyRecord) -> None:
        done = IdempotencyRecord(record.run_id, record.created_at, record.fingerprint, done=True)
        await self._call(self._redis.set(self._key(user_id, key), done.to_json(), xx=True, keepttl=True))

    async def release(self, user_id: str, key: str, run_id: str) -> None:
        """Forget a claim whose run was never published, so a retry with the same key can start it."""
        await self._call(self._redis.eval(_RELEASE, 1, self._key(user_id, key), run_id))

    async def _call(self, op: Any) -> Any:
        try:
            return await op
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"idempotency store unavailable: {exc}") from exc
