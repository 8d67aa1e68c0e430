"""The shared limit on real Redis: one in-flight count for every process, and a dead process's slots come back."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from echelon_platform.adapters.adaptive_limit import AdaptiveLimiter
from echelon_platform.config import Settings
from tests.helpers import HeldCalls, wait_for


@pytest_asyncio.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(str(settings.redis_url))
    yield client
    await client.aclose()


def limiter(redis: aioredis.Redis, settings: Settings, *, lease_s: float = 30.0) -> AdaptiveLimiter:
    return AdaptiveLimiter("judge", cap=3, redis=redis, prefix=settings.redis_prefix, lease_s=lease_s)


async def test_two_processes_hold_one_in_flight_count(redis: aioredis.Redis, settings: Settings) -> None:
    first, second = limiter(redis, settings), limiter(redis, settings)  # as two processes would
    calls = HeldCalls()
    tasks = [asyncio.create_task(calls.call(first if i % 2 else second)) for i in range(8)]

    async def three_in_flight() -> bool:
        return calls.in_flight == 3 and (await first.shared_state())[1] == 3  # inside their slots, and leased

    await wait_for(three_in_flight, what="three calls in flight across both")
    assert not any(t.done() for t in tasks)
    calls.release.set()
    await asyncio.gather(*tasks)
    assert calls.peak == 3
    assert await first.shared_state() == (3.0, 0)  # every lease handed back; the ceiling held


async def test_the_slots_of_a_process_that_died_come_back_when_its_leases_expire(
    redis: aioredis.Redis, settings: Settings
) -> None:
    dead = limiter(redis, settings, lease_s=0.5)
    for _ in range(3):
        await dead._acquire()  # calls in flight when the process died: never released
    assert dead._renewer is not None
    dead._renewer.cancel()  # and nothing renews them any more
    alive = limiter(redis, settings)
    async with asyncio.timeout(20), alive.slot():
        assert (await alive.shared_state())[1] == 1  # the dead process's three leases expired


class CancelledOnTheWayBack:
    """Redis whose answer to the acquire script is lost to a cancel: the script ran, the caller never knew."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def eval(self, *args: Any) -> Any:
        await self.redis.eval(*args)
        raise asyncio.CancelledError

    def __getattr__(self, name: str) -> Any:
        return getattr(self.redis, name)


async def test_a_call_cancelled_while_taking_its_lease_hands_it_back(redis: aioredis.Redis, settings: Settings) -> None:
    cancelled = AdaptiveLimiter("judge", cap=3, redis=CancelledOnTheWayBack(redis), prefix=settings.redis_prefix)  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        async with cancelled.slot():
            pass
    assert (await limiter(redis, settings).shared_state())[1] == 0


class CountsScripts:
    """Redis that counts the scripts it is asked to run (the acquire script is the one with lease ids)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.acquires = 0
        self.releases = 0

    async def eval(self, script: str, *args: Any) -> Any:
        if "ZREMRANGEBYSCORE" in script:
            self.acquires += 1
        if "'ZREM'" in script:
            self.releases += 1
        return await self.redis.eval(script, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.redis, name)


async def test_calls_launched_together_take_their_leases_in_a_few_round_trips(
    redis: aioredis.Redis, settings: Settings
) -> None:
    """Sixty calls launched at once on a limit of 40: forty get a lease in a few round trips, the calls in flight
    at most doubling with each (one script per call, in turn, kept the last call waiting for sixty); the other
    twenty as slots come back, and never more than forty in flight. Calls that end together hand their leases
    back together too."""
    counting = CountsScripts(redis)
    limit = AdaptiveLimiter("judge", cap=40, redis=counting, prefix=settings.redis_prefix)  # type: ignore[arg-type]
    calls = HeldCalls()
    tasks = [asyncio.create_task(calls.call(limit)) for _ in range(60)]
    await wait_for(lambda: calls.in_flight == 40, what="forty calls in flight")
    assert counting.acquires <= 8  # 2, 2, 4, 8, 16, 8: doubling up to the limit
    calls.release.set()
    await asyncio.gather(*tasks)
    assert calls.peak == 40
    assert (await limit.shared_state())[1] == 0  # every lease handed back
    assert counting.releases <= 20  # sixty calls ended: one script each before


async def test_a_caller_cancelled_while_its_lease_is_asked_for_does_not_keep_it(
    redis: aioredis.Redis, settings: Settings
) -> None:
    limit = limiter(redis, settings)  # cap 3
    waiting = [asyncio.create_task(limit._acquire()) for _ in range(3)]
    await asyncio.sleep(0)  # all three wait for the same round trip
    waiting[1].cancel()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert all(isinstance(r, str) for r in (results[0], results[2]))
    assert (await limit.shared_state())[1] == 2  # the cancelled caller's lease was not taken or was given back


async def test_calls_in_flight_at_most_double_per_round_trip(redis: aioredis.Redis, settings: Settings) -> None:
    """Before a provider has answered, its first refusals should come back before the whole backlog is sent."""
    limit = AdaptiveLimiter("judge", cap=64, redis=redis, prefix=settings.redis_prefix)
    counts: list[int] = []
    leases_before = 0

    class Watching:
        def __init__(self, inner: aioredis.Redis) -> None:
            self.inner = inner

        async def eval(self, script: str, *args: Any) -> Any:
            nonlocal leases_before
            if "ZREMRANGEBYSCORE" in script:
                leases_before = int(await self.inner.zcard(limit._lease_key))
            result = await self.inner.eval(script, *args)
            if "ZREMRANGEBYSCORE" in script and int(result[0]):
                counts.append(int(result[0]) + leases_before)
            return result

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    limit._redis = Watching(redis)  # type: ignore[assignment]
    leases = await asyncio.gather(*(limit._acquire() for _ in range(50)))
    assert len(set(leases)) == 50
    assert counts[0] == 2 and all(b <= 2 * a for a, b in itertools.pairwise(counts))


async def test_calls_waiting_for_a_slot_are_not_left_hanging_when_the_asking_stops(
    redis: aioredis.Redis, settings: Settings
) -> None:
    limit = AdaptiveLimiter("judge", cap=1, redis=redis, prefix=settings.redis_prefix)
    first = await limit._acquire()  # the one slot
    waiting = [asyncio.create_task(limit._acquire()) for _ in range(2)]
    await wait_for(lambda: limit._asker is not None and len(limit._waiting) == 2, what="two calls waiting")
    assert limit._asker is not None
    limit._asker.cancel()  # the process is stopping
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert isinstance(first, str)


@pytest.mark.parametrize(("requests_per_minute", "limit"), [(12_000, 9.0), (None, 4.5)])
async def test_a_shared_refusal_does_not_cut_below_what_the_stated_rate_keeps_busy(
    redis: aioredis.Redis, settings: Settings, requests_per_minute: int | None, limit: float
) -> None:
    """The shared script's policy, as the one in a process: a provider stating 200 requests/s with a baseline
    of >= 0.2 s keeps >= 40 calls busy, so a refusal leaves a limit of 9 as it is; without it, the 9 in flight
    are halved."""
    shared = AdaptiveLimiter("judge", cap=9, redis=redis, prefix=settings.redis_prefix)
    async with shared.slot():
        await asyncio.sleep(0.2)  # the baseline
    calls = HeldCalls()
    holders = [asyncio.create_task(calls.call(shared)) for _ in range(8)]
    await wait_for(lambda: calls.in_flight == 8, what="eight calls in flight")
    headers = {} if requests_per_minute is None else {"anthropic-ratelimit-requests-limit": str(requests_per_minute)}
    with pytest.raises(RuntimeError):
        async with shared.slot() as slot:
            slot.headers(headers)
            slot.overloaded(0.01, rate_limited=True)
            raise RuntimeError("429")
    after = (await shared.shared_state())[0]  # before the others end: their successes would grow it again
    calls.release.set()
    await asyncio.gather(*holders)
    assert after == pytest.approx(limit)
