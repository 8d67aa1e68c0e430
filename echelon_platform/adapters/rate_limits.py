"""Per-user request state in Redis: a sliding-window rate limit and the recently accepted runs.

This is request bookkeeping under `settings.redis_prefix`, not domain state: losing it (a flush) can only
reset a rate-limit window or delay a new run's appearance in the list. `Idempotency-Key`s are not kept
here: they map to a deterministic run id (see api/runs.py), so no Redis state decides whether a run starts.
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime
from functools import lru_cache
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from echelon_platform.domain.ids import new_ulid
from echelon_platform.errors import RateLimited, ReadModelError

# Sliding window log: timestamps (server clock, so several API processes agree) of the calls in the window.
# A Lua function (scripts that do more in the same round trip call it): an admitted call is recorded and
# answers -1; a refused one, the ms until a slot frees.
WINDOW_LUA = """
local function sliding_window(key, limit, window, member)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) < limit then
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, window)
    return -1
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + window - now
end
"""
_SLIDING_WINDOW = WINDOW_LUA + "return sliding_window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])\n"
_SLIDING_WINDOW_SHA = hashlib.sha1(_SLIDING_WINDOW.encode()).hexdigest()

# `RecentRuns.add` as a Lua function, for POST /runs's admission script (adapters/run_admission.py).
RECENT_NOTE_LUA = """
local function note_recent(key, run_id, score, stale_before, keep, ttl)
  redis.call('ZADD', key, score, run_id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', stale_before)
  redis.call('ZREMRANGEBYRANK', key, 0, -tonumber(keep) - 1)
  redis.call('EXPIRE', key, ttl)
end
"""


@lru_cache(maxsize=4096)
def _digest(*parts: str) -> str:
    # Cached: the same few users call again and again, and the key is built on every request.
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, prefix: str, *, limit: int, window_s: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self.limit = limit
        self.window_ms = int(window_s * 1000)

    async def hit(self, scope: str, user_id: str) -> None:
        """Count one call; RateLimited (→ 429 with Retry-After) when the window is already full."""
        key = self.key(scope, user_id)
        try:
            args = (self.limit, self.window_ms, new_ulid())
            wait_ms = int(await run_script(self._redis, _SLIDING_WINDOW, _SLIDING_WINDOW_SHA, (key,), args))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"rate limiter unavailable: {exc}") from exc
        self.raise_if_full(scope, wait_ms)

    def key(self, scope: str, user_id: str) -> str:
        return f"{self._prefix}ratelimit:{scope}:{_digest(user_id)}"

    def raise_if_full(self, scope: str, wait_ms: int) -> None:
        """RateLimited (→ 429 with Retry-After) unless the window script admitted the call (-1)."""
        if wait_ms >= 0:
            retry_after = max(1, math.ceil(wait_ms / 1000))
            raise RateLimited(
                f"rate limit: at most {self.limit} {scope} per {self.window_ms // 1000} s per user; "
                f"retry in {retry_after} s",
                retry_after=retry_after,
            )


async def run_script(
    client: aioredis.Redis, script: str, sha: str, keys: tuple[str, ...], args: tuple[Any, ...]
) -> Any:
    """EVALSHA (the script's hash instead of its text on every call); EVAL once when Redis lacks it."""
    try:
        return await client.evalsha(sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        return await client.eval(script, len(keys), *keys, *args)


class RecentRuns:
    """Per user, the runs this API accepted in the last `ttl_s`: a read-your-writes hint that lets the run
    list show a run before the coordinator projected it. Only a cache — losing it delays a run's appearance
    in the list, nothing else; entries the read model already shows are dropped."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *, ttl_s: int = 600, max_entries: int = 100) -> None:
        self._redis = redis
        self._prefix = prefix
        self.ttl_s = ttl_s
        self.max_entries = max_entries

    def key(self, user_id: str) -> str:
        return f"{self._prefix}recent:runs:{_digest(user_id)}"

    async def add(self, user_id: str, run_id: str, created_at: datetime) -> None:
        key = self.key(user_id)
        now_ms = time.time() * 1000
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {run_id: created_at.timestamp() * 1000})
            pipe.zremrangebyscore(key, "-inf", now_ms - self.ttl_s * 1000)
            pipe.zremrangebyrank(key, 0, -self.max_entries - 1)  # keep the newest
            pipe.expire(key, self.ttl_s)
            await self._call(pipe.execute())

    async def run_ids(self, user_id: str) -> list[str]:
        """Newest first, only those younger than the TTL."""
        since_ms = time.time() * 1000 - self.ttl_s * 1000
        raw = await self._call(self._redis.zrevrangebyscore(self.key(user_id), "+inf", since_ms))
        return [m.decode() if isinstance(m, bytes) else str(m) for m in raw]

    async def forget(self, user_id: str, run_ids: list[str]) -> None:
        if run_ids:
            await self._call(self._redis.zrem(self.key(user_id), *run_ids))

    async def _call(self, op: Any) -> Any:
        try:
            return await op
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"recent-runs hint unavailable: {exc}") from exc
