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
from ulid import ULID

from echelon_platform.errors import RateLimited, ReadModelError

# Sliding window log: timestamps (server clock, so several API processes agree) of the calls in the window.
# An admitted call is recorded (plus what `admitted` adds) and answers -1; a refused one, the ms until a slot frees.
_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
{admitted}  return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window - now
"""
_SLIDING_WINDOW = _WINDOW.format(admitted="")

# POST /runs in one round trip (its only Redis call): the sliding window above and, if the run is admitted,
# the RecentRuns note of it (read-your-writes for the list) with that class's trimming.
_ADMIT_RUN = _WINDOW.format(
    admitted="""  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[6])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[7]) - 1)
  redis.call('EXPIRE', KEYS[2], ARGV[8])
"""
)
_ADMIT_RUN_SHA = hashlib.sha1(_ADMIT_RUN.encode()).hexdigest()


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
        key = f"{self._prefix}ratelimit:{scope}:{_digest(user_id)}"
        try:
            wait_ms = int(await self._redis.eval(_SLIDING_WINDOW, 1, key, self.limit, self.window_ms, str(ULID())))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"rate limiter unavailable: {exc}") from exc
        self._raise_if_full(scope, wait_ms)

    async def admit_run(self, user_id: str, run_id: str, created_at: datetime, recent: RecentRuns) -> None:
        """`hit("runs", user_id)` and, when admitted, `recent.add(...)` of the run, in one Redis round trip.

        Noted before the run is published, so the caller forgets it again if the publish fails; a note left
        behind anyway (the process died in between) only costs the list one stream lookup until it expires."""
        keys = (f"{self._prefix}ratelimit:runs:{_digest(user_id)}", recent.key(user_id))
        now_ms = time.time() * 1000
        args = (
            self.limit,
            self.window_ms,
            str(ULID()),
            run_id,
            created_at.timestamp() * 1000,
            now_ms - recent.ttl_s * 1000,
            recent.max_entries,
            recent.ttl_s,
        )
        try:
            wait_ms = int(await _run_script(self._redis, _ADMIT_RUN, _ADMIT_RUN_SHA, keys, args))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"rate limiter unavailable: {exc}") from exc
        self._raise_if_full("runs", wait_ms)

    def _raise_if_full(self, scope: str, wait_ms: int) -> None:
        if wait_ms >= 0:
            retry_after = max(1, math.ceil(wait_ms / 1000))
            raise RateLimited(
                f"rate limit: at most {self.limit} {scope} per {self.window_ms // 1000} s per user; "
                f"retry in {retry_after} s",
                retry_after=retry_after,
            )


async def _run_script(
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
