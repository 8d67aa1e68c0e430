"""Adaptive concurrency per provider endpoint (the judge, HTTP oracles), shared by every process that uses it.

AIMD, the way TCP finds a path's capacity: each call that succeeds while latency holds (at most
``LATENCY_TOLERANCE`` x the endpoint's baseline), the limit is in use (at least half of it in flight) and
the provider's rate budget is not spent adds 1/limit, so the limit grows by about one per round trip; an
overload (429, 529, 503, an ``overloaded_error``) halves it (or the calls in flight, when fewer), at most
once per round trip, and a ``retry-after`` or an exhausted ``anthropic-ratelimit-*-remaining`` pauses
every new call until then. A refusal for the request rate (429) from a provider that states it
(``anthropic-ratelimit-requests-limit``, per minute) does not cut below the calls that rate keeps busy
(Little's law: requests per second x the baseline latency): fewer could not use the rate, and the pause
already spaces the calls out (a 5 s judge at 1,000 requests/min needs 83 in flight; halved to 60 at the
first refusal, a run of 200 replays waited one more round trip of 5 s for its last calls).
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

from echelon_platform.domain.ids import new_ulid
from echelon_platform.errors import EndpointBusy

log = structlog.get_logger(__name__)

LATENCY_TOLERANCE = 2.0  # a call slower than this x the baseline does not grow the limit
STATE_TTL_S = 3600
MAX_PAUSE_S = 60.0
MAX_ENDPOINTS = 1024
Kind = Literal["ok", "overload", "error"]
_LOCALLY = ""  # a waiting call's answer when Redis is unavailable: take a slot in this process instead

# KEYS: state hash, lease zset. ARGV: lease ms, cap, initial, lease ids (one per waiting call, in order).
# Takes as many of the leases as there is room for, first ones first, but at most as many as are in flight
# (at least 2): the calls in flight at most double per round trip, so a provider's first refusals come back
# before the whole backlog has been sent. Returns {leases taken, 0}, {0, ms to wait} while paused, {0, -1}
# when full.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local st = redis.call('HMGET', KEYS[1], 'limit', 'pause_until')
local cap = tonumber(ARGV[2])
local limit = math.min(cap, tonumber(st[1]) or tonumber(ARGV[3]))
local pause = tonumber(st[2]) or 0
if pause > now then return {0, pause - now} end
local in_flight = redis.call('ZCARD', KEYS[2])
local room = math.max(1, math.floor(limit)) - in_flight
local taken = math.min(room, #ARGV - 3, math.max(2, in_flight))
if taken < 1 then return {0, -1} end
for i = 1, taken do redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), ARGV[3 + i]) end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]) * 2)
return {taken, 0}
"""

# KEYS: state hash, lease zset. ARGV: cap, initial, tolerance, ttl s, then per call that ended (in order):
# lease id, kind, latency ms, pause ms, the provider's stated requests per second (0: not stated). The calls'
# feedback is applied one after the other, as if each had its own script. Returns the limit after it (as a
# string: Lua numbers become integers on the way out).
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'limit', 'base_ms', 'last_cut', 'pause_until')
local cap = tonumber(ARGV[1])
local limit = math.min(cap, tonumber(st[1]) or tonumber(ARGV[2]))
local base = tonumber(st[2])
local last_cut = tonumber(st[3]) or 0
local pause = tonumber(st[4]) or 0
for i = 5, #ARGV, 5 do
  local in_flight = redis.call('ZCARD', KEYS[2])
  redis.call('ZREM', KEYS[2], ARGV[i])
  local kind, latency, wait = ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local busy = tonumber(ARGV[i + 4]) * (base or 0) / 1000  -- in flight that the stated rate keeps busy
  if kind == 'ok' then
    if base == nil or latency < base then base = latency else base = base * 1.01 end
    local exhausted = wait > 0  -- the answer said the provider's budget is spent: no room to grow
    if not exhausted and latency <= base * tonumber(ARGV[3]) and in_flight * 2 >= limit then
      limit = math.min(cap, limit + 1 / limit)
    end
  elseif kind == 'overload' then
    if now - last_cut > math.max(1000, base or 0) then
      limit = math.max(1, math.min(limit, busy), math.min(limit, in_flight) / 2)
      last_cut = now
    end
  end
  if wait > 0 and now + wait > pause then pause = now + wait end
end
redis.call('HSET', KEYS[1], 'limit', limit, 'last_cut', last_cut, 'pause_until', pause)
if base ~= nil then redis.call('HSET', KEYS[1], 'base_ms', base) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
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
    rate_per_s: float = 0.0  # the provider's stated request rate (0: not stated)
    rate_limited: bool = False  # refused for its request rate (429), not overloaded (529, 503, a time-out)

    def overloaded(self, retry_after_s: float | None = None, *, rate_limited: bool = False) -> None:
        self.kind = "overload"
        self.rate_limited = self.rate_limited or rate_limited
        self.pause_s = max(self.pause_s, min(MAX_PAUSE_S, retry_after_s or 0.0))

    def failed(self) -> None:
        self.kind = "error"

    def headers(self, headers: Mapping[str, str]) -> None:
        """An answer's rate-limit headers: an exhausted budget pauses new calls until it resets, and the
        stated request rate bounds how far a refusal for that rate may cut the limit."""
        self.pause_s = max(self.pause_s, pause_from_headers(headers))
        self.rate_per_s = max(self.rate_per_s, requests_per_s(headers))


def requests_per_s(headers: Mapping[str, str]) -> float:
    """The provider's stated request rate (``anthropic-ratelimit-requests-limit``, per minute), per second."""
    for name, value in headers.items():
        if name.lower() == "anthropic-ratelimit-requests-limit":
            try:
                per_minute = float(value)
            except ValueError:
                return 0.0
            return per_minute / 60 if math.isfinite(per_minute) and per_minute > 0 else 0.0
    return 0.0


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
        self._turn = asyncio.Lock()  # without Redis: one waiter at a time looks for room; the others queue here
        self._waiting: list[asyncio.Future[str | None]] = []  # calls waiting for a shared lease, in order
        self._asker: asyncio.Task[None] | None = None  # asks Redis for the waiting calls' leases
        # Calls that ended (lease, kind, latency ms, pause s, stated rate, done), and the task handing their
        # leases back.
        self._ending: list[tuple[str, Kind, float, float, float, asyncio.Future[None]]] = []
        self._releaser: asyncio.Task[None] | None = None
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
            rate_per_s = slot.rate_per_s if slot.rate_limited else 0.0  # an overload is cut as far as it goes
            await asyncio.shield(self._release(lease, kind, latency_ms, slot.pause_s, rate_per_s))

    async def _acquire(self) -> str | None:
        """A lease id (shared), or None (granted locally: no Redis, or Redis unavailable)."""
        if self._redis is None:
            await self._acquire_locally()
            return None
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        if self._asker is None or self._asker.done():
            self._asker = asyncio.create_task(self._ask())
        try:
            lease = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result() not in (None, _LOCALLY):
                # Granted as the caller was cancelled: hand the lease back.
                self._held.discard(waiter.result())
                await asyncio.shield(self._drop([str(waiter.result())]))
            raise
        if lease == _LOCALLY:
            await self._acquire_locally()
            return None
        return lease

    async def _ask(self) -> None:
        """Ask Redis for a lease for every call waiting in this process, in one round trip: a hundred calls
        launched together wait for one script, not for a hundred in turn."""
        try:
            await self._ask_for_waiting()
        except BaseException:
            for waiter in self._waiting:  # stopped (the process is stopping): nobody is left waiting forever
                waiter.cancel()
            self._waiting.clear()
            raise

    async def _ask_for_waiting(self) -> None:
        assert self._redis is not None
        delay = 0.01
        while self._waiting:
            waiters = [w for w in self._waiting if not w.done()]  # a cancelled caller no longer waits
            self._waiting.clear()
            if not waiters:
                break
            leases = [new_ulid() for _ in waiters]
            self._released.clear()  # a release from now on wakes the wait below
            try:
                taken, wait_ms = await self._redis.eval(
                    _ACQUIRE, 2, self._state_key, self._lease_key, self._lease_ms, self.cap, self.initial, *leases
                )
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("limit.redis_unavailable", endpoint=self.endpoint, error=str(exc))
                for waiter in waiters:  # the same policy, in this process, until Redis is back
                    if not waiter.done():
                        waiter.set_result(_LOCALLY)
                continue
            except BaseException:
                # Cancelled (or worse) while the answer was on its way: the leases may be taken; hand them back.
                await asyncio.shield(self._drop(leases))
                for waiter in waiters:
                    waiter.cancel()
                raise
            taken = int(taken)
            self._waiting[:0] = waiters[taken:]  # still first in line, before the calls that came meanwhile
            unused = []
            for waiter, lease in zip(waiters[:taken], leases[:taken], strict=True):
                if waiter.done():
                    unused.append(lease)
                else:
                    self._held.add(lease)
                    waiter.set_result(lease)
            if taken:
                self._ensure_renewer()
            if unused:
                await asyncio.shield(self._drop(unused))
            if taken == len(waiters):
                delay = 0.01
                continue
            if int(wait_ms) > 0:  # paused by the provider: nothing can start before then
                await asyncio.sleep(int(wait_ms) / 1000)
                continue
            # Full: a local release wakes us at once; other processes' releases are polled.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), delay)
            delay = min(0.1, delay * 1.5)

    async def _acquire_locally(self) -> None:
        async with self._turn:
            delay = 0.01
            while True:
                now = time.monotonic()
                if self._pause_until > now:  # paused by the provider: nothing can start before then
                    await asyncio.sleep(self._pause_until - now)
                    continue
                if self._in_flight < max(1, math.floor(self.limit)):
                    self._in_flight += 1
                    return
                self._released.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), delay)
                delay = min(0.1, delay * 1.5)

    async def _release(
        self, lease: str | None, kind: Kind, latency_ms: float, pause_s: float, rate_per_s: float
    ) -> None:
        if lease is None:
            self._feedback_locally(kind, latency_ms, pause_s, rate_per_s)
            self._in_flight -= 1
            self._released.set()
            return
        self._held.discard(lease)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ending.append((lease, kind, latency_ms, pause_s, rate_per_s, done))
        if self._releaser is None or self._releaser.done():
            self._releaser = asyncio.create_task(self._release_ended())
        await done

    async def _release_ended(self) -> None:
        """Hand back the leases of the calls that ended, with their feedback, in one script per round trip
        (answers that come back together: one round trip, not one each)."""
        assert self._redis is not None
        while self._ending:
            ending, self._ending = self._ending, []
            args: list[str | float | int] = [self.cap, self.initial, LATENCY_TOLERANCE, STATE_TTL_S]
            for lease, kind, latency_ms, pause_s, rate_per_s, _ in ending:
                args += [lease, kind, round(latency_ms, 3), int(pause_s * 1000), round(rate_per_s, 6)]
            try:
                limit = await self._redis.eval(_RELEASE, 2, self._state_key, self._lease_key, *args)
            except (redis.exceptions.RedisError, OSError) as exc:  # the leases expire on their own
                log.warning("limit.redis_unavailable", endpoint=self.endpoint, error=str(exc))
            else:
                before, self.limit = self.limit, float(limit)
                if any(e[1] == "overload" for e in ending) and self.limit < before:
                    pause_s = max(e[3] for e in ending)
                    log.info("limit.decreased", endpoint=self.endpoint, limit=round(self.limit, 2), pause_s=pause_s)
            finally:
                for *_, done in ending:
                    if not done.done():
                        done.set_result(None)
                self._released.set()

    def _feedback_locally(self, kind: Kind, latency_ms: float, pause_s: float, rate_per_s: float) -> None:
        now = time.monotonic()
        if kind == "ok":
            base = self._base_ms
            self._base_ms = latency_ms if base is None or latency_ms < base else base * 1.01
            in_use = self._in_flight * 2 >= self.limit
            if pause_s == 0 and latency_ms <= self._base_ms * LATENCY_TOLERANCE and in_use:
                self.limit = min(self.cap, self.limit + 1 / self.limit)
        elif kind == "overload" and (now - self._last_cut) * 1000 > max(1000.0, self._base_ms or 0.0):
            # Halve what was in use when the provider refused (the limit may be far above it), but not below
            # what the provider's stated rate keeps busy.
            busy = rate_per_s * (self._base_ms or 0.0) / 1000
            self.limit = max(1.0, min(self.limit, busy), min(self.limit, self._in_flight) / 2)
            self._last_cut = now
            log.info("limit.decreased", endpoint=self.endpoint, limit=round(self.limit, 2), pause_s=pause_s)
        if pause_s > 0:
            self._pause_until = max(self._pause_until, now + pause_s)

    async def _drop(self, leases: list[str]) -> None:
        assert self._redis is not None
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await self._redis.zrem(self._lease_key, *leases)

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
