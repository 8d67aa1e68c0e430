"""The shared limit on real Redis: one in-flight count for every process, and a dead process's slots come back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from echelon_platform.adapters.adaptive_limit import AdaptiveLimiter
from echelon_platform.config import Settings
from tests.helpers import wait_for


@pytest_asyncio.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(str(settings.redis_url))
    yield client
    await client.aclose()


def limiter(redis: aioredis.Redis, settings: Settings, *, lease_s: float = 30.0) -> AdaptiveLimiter:
    return AdaptiveLimiter("judge", cap=3, redis=redis, prefix=settings.redis_prefix, lease_s=lease_s)


async def test_two_processes_hold_one_in_flight_count(redis: aioredis.Redis, settings: Settings) -> None:
    first, second = limiter(redis, settings), limiter(redis, settings)  # as two processes would
    in_flight = peak = 0
    release = asyncio.Event()

    async def call(limit: AdaptiveLimiter) -> None:
        nonlocal in_flight, peak
        async with limit.slot():
            in_flight += 1
            peak = max(peak, in_flight)
            await release.wait()
            in_flight -= 1

    tasks = [asyncio.create_task(call(first if i % 2 else second)) for i in range(8)]

    async def three_in_flight() -> bool:
        return (await first.shared_state())[1] == 3

    await wait_for(three_in_flight, what="three calls in flight across both")
    assert not any(t.done() for t in tasks)
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 3
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
