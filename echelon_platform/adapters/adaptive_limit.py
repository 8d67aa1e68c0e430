"""Adaptive concurrency per provider endpoint (the judge, HTTP oracles), shared by every process that uses it.

AIMD, the way TCP finds a path's capacity: each call that succeeds while latency holds (at most
``LATENCY_TOLERANCE`` x the endpoint's baseline), the limit is in use (at least half of it in flight) and
the provider's rate budget is not spent adds 1/limit, so the limit grows by about one per round trip; an
overload (429, 529, 503, an ``overloaded_error``) halves it (or the calls in flight, when fewer), at most
once per round trip, and a ``retry-after`` or an exhausted ``anthropic-ratelimit-*-remaining`` pauses
every new call until then.
The configured concurrency is the ceiling, and the first calls start at it (``initial``): a provider's
limit is found from above in a few round trips, where growing from below would cost several on every run.

No well-kept Python library does adaptive concurrency (Netflix's concurrency-limits is Java; aiolimiter
and pyrate-limiter are fixed rate limiters), and none shares the limit between processes, so it is here.

Shared through Redis, not split: several score workers on one provider endpoint hold one limit and one
in-flight count (per endpoint, not per key: no credential enters a Redis key or a log line). Each call in
flight is a lease in a sorted set, scored by its expiry and renewed while the call runs, so a process that
dies frees its slots within ``lease_s``; a call cancelled while taking its lease hands it back. The learned
limit outlives a run (for ``STATE_TTL_S``), so the next run starts where the last one ended. Without Redis
the same policy runs in the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import redis.asyncio as aioredis
import redis.exceptions
import structlog
from cachetools import LRUCache
from ulid import ULID

from echelon_platform.errors import EndpointBusy

log = structlog.get_logger(__name__)

LATENCY_TOLERANCE = 2.0  # a call slower than this x the baseline does not grow the limit
STATE_TTL_S = 3600
MAX_PAUSE_S = 60.0
MAX_ENDPOINTS = 1024
Kind = Literal["ok", "overload", "error"]

# KEYS: state hash, lease zset. ARGV: lease id, lease ms, cap, initial.
# Returns {1, 0} when a lease was taken, {0, ms to wait} while paused, {0, -1} when full.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local st = redis.call('HMGET', KEYS[1], 'limit', 'pause_until')
local cap = tonumber(ARGV[3])
local limit = math.min(cap, tonumber(st[1]) or tonumber(ARGV[4]))
local pause = tonumber(st[2]) or 0
if pause > now then return {0, pause - now} end
if redis.call('ZCARD', KEYS[2]) < math.max(1, math.floor(limit)) then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
  return {1, 0}
end
return {0, -1}
"""

# KEYS: state hash, lease zset. ARGV: lease id, kind, latency ms, pause ms, cap, initial, tolerance, ttl s.
# Returns the limit after the feedback (as a string: Lua numbers become integers on the way out).
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local in_flight = redis.call('ZCARD', KEYS[2])
redis.call('ZREM', KEYS[2], ARGV[1])
local st = redis.call('HMGET', KEYS[1], 'limit', 'base_ms', 'last_cut', 'pause_until')
local cap = tonumber(ARGV[5])
local limit = math.min(cap, tonumber(st[1]) or tonumber(ARGV[6]))
local base = tonumber(st[2])
local last_cut = tonumber(st[3]) or 0
local pause = tonumber(st[4]) or 0
local latency = tonumber(ARGV[3])
if ARGV[2] == 'ok' then
  if base == nil or latency < base then base = latency else base = base * 1.01 end
  local exhausted = tonumber(ARGV[4]) > 0  -- the answer said the provider's budget is spent: no room to grow
  if not exhausted and latency <= base * tonumber(ARGV[7]) and in_flight * 2 >= limit then
    limit = math.min(cap, limit + 1 / limit)
  end
elseif ARGV[2] == 'overload' then
  if now - last_cut > math.max(1000, base or 0) then
    limit = math.max(1, math.min(limit, in_flight) / 2)
    last_cut = now
  end
end
local wait = tonumber(ARGV[4])
if wait > 0 and now + wait > pause then pause = now + wait end
redis.call('HSET', KEYS[1], 'limit', limit, 'last_cut', last_cut, 'pause_until', pause)
if base ~= nil then redis.call('HSET', KEYS[1], 'base_ms', base) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]))
return tostring(limit)
"""

# KEYS: lease zset. ARGV: lease ms, lease ids...: push the expiry of the leases still held.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""


def endpoint_id(url: str) -> str:
    """A stable name for an endpoint. No credential enters it (keys and logs show it): processes on several
    keys of one endpoint share one limit, the safe side of the provider's per-key limits."""
    return hashlib.sha256(url.encode()).hexdigest()[:24]


@dataclass
class Slot:
    """One call's lease. Report what the provider said; the default outcome is judged from the exception."""

    started: float = field(default_factory=time.monotonic)
    kind: Kind | None = None
    pause_s: float = 0.0

    def overloaded(self, retry_after_s: float | None = None) -> None:
        self.kind = "overload"
        self.pause_s = max(self.pause_s, min(MAX_PAUSE_S, retry_after_s or 0.0))

    def failed(self) -> None:
        self.kind = "error"

    def headers(self, headers: Mapping[str, str]) -> None:
        """An answer's rate-limit headers: an exhausted budget pauses new calls until it resets."""
        self.pause_s = max(self.pause_s, pause_from_headers(headers))


def pause_from_headers(headers: Mapping[str, str], now: datetime | None = None) -> float:
    """Seconds until every exhausted ``anthropic-ratelimit-*-remaining`` budget resets (0 when none is)."""
    pause = 0.0
    for name, value in headers.items():
        lower = name.lower()
        if not (lower.startswith("anthropic-ratelimit-") and lower.endswith("-remaining")):
            continue
        if value.strip() != "0":
            continue
        reset = headers.get(lower.removesuffix("-remaining") + "-reset")
        if reset is None:
            continue
        try:
            at = datetime.fromisoformat(reset.replace("Z", "+00:00"))
        except ValueError:
            continue
        moment = now or datetime.now(at.tzinfo)
        pause = max(pause, (at - moment).total_seconds())
    return min(MAX_PAUSE_S, pause)


def retry_after_seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class AdaptiveLimiter:
    """The limit of one endpoint as seen by this process; ``slot()`` around each call."""

    def __init__(
        self,
        endpoint: str,
        *,
        cap: int,
        initial: int | None = None,
        redis: aioredis.Redis | None = None,
        prefix: str = "",
        lease_s: float = 30.0,
        classify: Callable[[BaseException, Slot], None] | None = None,
    ) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.endpoint = endpoint
        self.cap = cap
        self.initial = max(1, min(cap, initial or cap))
        self._redis = redis
        self._state_key = f"{prefix}limit:{endpoint}"
        self._lease_key = f"{prefix}limit:{endpoint}:leases"
        self._lease_ms = int(lease_s * 1000)
        self._classify = classify
        self._turn = asyncio.Lock()  # one waiter per process asks Redis at a time; the others queue here
        self._released = asyncio.Event()
        self._held: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None
        # In-process state: used without Redis (and the last known limit, for metrics and logs).
        self.limit = float(self.initial)
        self._in_flight = 0
        self._base_ms: float | None = None
        self._last_cut = 0.0
        self._pause_until = 0.0

    @property
    def shared(self) -> bool:
        return self._redis is not None

    @contextlib.asynccontextmanager
    async def slot(self, *, wait_s: float | None = None) -> AsyncIterator[Slot]:
        """A slot for one call; EndpointBusy when none came free within `wait_s` (nothing was sent)."""
        try:
            async with asyncio.timeout(wait_s):
                lease = await self._acquire()
        except TimeoutError:
            raise EndpointBusy(f"no free slot for endpoint {self.endpoint} within {wait_s:g}s") from None
        slot = Slot()
        try:
            yield slot
        except BaseException as exc:
            if slot.kind is None and self._classify is not None and isinstance(exc, Exception):
                self._classify(exc, slot)
            if slot.kind is None:
                slot.kind = "error"
            raise
        finally:
            kind: Kind = slot.kind or "ok"
            latency_ms = (time.monotonic() - slot.started) * 1000
            # Shielded: a cancelled call must still hand its lease back.
            await asyncio.shield(self._release(lease, kind, latency_ms, slot.pause_s))

    async def _acquire(self) -> str | None:
        async with self._turn:
            delay = 0.01
            while True:
                wait = await self._try_acquire()
                if isinstance(wait, str) or wait is None:
                    return wait
                self._released.clear()
                if wait > 0:  # paused by the provider: nothing can start before then
                    await asyncio.sleep(wait)
                    continue
                # Full: a local release wakes us at once; other processes' releases are polled.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), delay)
                delay = min(0.1, delay * 1.5)

    async def _try_acquire(self) -> str | float | None:
        """A lease id (shared), None (granted locally), or seconds to wait (0: full)."""
        if self._redis is not None:
            lease = str(ULID())
            try:
                granted, wait_ms = await self._redis.eval(
                    _ACQUIRE, 2, self._state_key, self._lease_key, lease, self._lease_ms, self.cap, self.initial
                )
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("limit.redis_unavailable", endpoint=self.endpoint, error=str(exc))
            except BaseException:
                # Cancelled (or worse) while the answer was on its way: the lease may be taken; hand it back.
                await asyncio.shield(self._drop(lease))
                raise
            else:
                if granted:
                    self._held.add(lease)
                    self._ensure_renewer()
                    return lease
                return max(0.0, int(wait_ms) / 1000)
        now = time.monotonic()
        if self._pause_until > now:
            return self._pause_until - now
        if self._in_flight < max(1, math.floor(self.limit)):
            self._in_flight += 1
            return None
        return 0.0

    async def _release(self, lease: str | None, kind: Kind, latency_ms: float, pause_s: float) -> None:
        self._released.set()
        if lease is None:
            self._feedback_locally(kind, latency_ms, pause_s)
            self._in_flight -= 1
            return
        self._held.discard(lease)
        assert self._redis is not None
        try:
            limit = await self._redis.eval(
                _RELEASE,
                2,
                self._state_key,
                self._lease_key,
                lease,
                kind,
                round(latency_ms, 3),
                int(pause_s * 1000),
                self.cap,
                self.initial,
                LATENCY_TOLERANCE,
                STATE_TTL_S,
            )
        except (redis.exceptions.RedisError, OSError) as exc:  # the lease expires on its own
            log.warning("limit.redis_unavailable", endpoint=self.endpoint, error=str(exc))
            return
        before, self.limit = self.limit, float(limit)
        if kind == "overload" and self.limit < before:
            log.info("limit.decreased", endpoint=self.endpoint, limit=round(self.limit, 2), pause_s=pause_s)

    def _feedback_locally(self, kind: Kind, latency_ms: float, pause_s: float) -> None:
        now = time.monotonic()
        if kind == "ok":
            base = self._base_ms
            self._base_ms = latency_ms if base is None or latency_ms < base else base * 1.01
            in_use = self._in_flight * 2 >= self.limit
            if pause_s == 0 and latency_ms <= self._base_ms * LATENCY_TOLERANCE and in_use:
                self.limit = min(self.cap, self.limit + 1 / self.limit)
        elif kind == "overload" and (now - self._last_cut) * 1000 > max(1000.0, self._base_ms or 0.0):
            # Halve what was in use when the provider refused (the limit may be far above it).
            self.limit = max(1.0, min(self.limit, self._in_flight) / 2)
            self._last_cut = now
            log.info("limit.decreased", endpoint=self.endpoint, limit=round(self.limit, 2), pause_s=pause_s)
        if pause_s > 0:
            self._pause_until = max(self._pause_until, now + pause_s)

    async def _drop(self, lease: str) -> None:
        assert self._redis is not None
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await self._redis.zrem(self._lease_key, lease)

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        """Keep this process's leases alive while their calls run; stops when it holds none."""
        assert self._redis is not None
        while self._held:
            await asyncio.sleep(self._lease_ms / 3000)
            held = list(self._held)
            if not held:
                break
            try:
                await self._redis.eval(_RENEW, 1, self._lease_key, self._lease_ms, *held)
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("limit.renew_failed", endpoint=self.endpoint, error=str(exc))

    async def shared_state(self) -> tuple[float, int]:
        """(limit, calls in flight) across every process: for tests and benchmarks."""
        if self._redis is None:
            return self.limit, self._in_flight
        raw = await self._redis.hget(self._state_key, "limit")
        in_flight = await self._redis.zcard(self._lease_key)
        return (float(raw) if raw is not None else float(self.initial)), int(in_flight)


class LimiterRegistry:
    """One limiter per endpoint in a process (HTTP oracles: one per oracle host)."""

    def __init__(
        self, *, cap: int, initial: int | None = None, redis: aioredis.Redis | None = None, prefix: str = ""
    ) -> None:
        self.cap = cap
        self.initial = initial
        self.redis = redis
        self.prefix = prefix
        # Bounded: one per endpoint seen lately (HTTP oracles are many); a dropped one is rebuilt from Redis.
        self._limiters: LRUCache[str, AdaptiveLimiter] = LRUCache(MAX_ENDPOINTS)

    @property
    def limiters(self) -> list[AdaptiveLimiter]:
        return list(self._limiters.values())

    def for_endpoint(
        self, url: str, *, classify: Callable[[BaseException, Slot], None] | None = None
    ) -> AdaptiveLimiter:
        key = endpoint_id(url)
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = AdaptiveLimiter(
                key, cap=self.cap, initial=self.initial, redis=self.redis, prefix=self.prefix, classify=classify
            )
            self._limiters[key] = limiter
        return limiter
