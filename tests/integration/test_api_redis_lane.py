"""The API's pipelined Redis connection (echelon_platform/adapters/redis_lane.py) against a real Redis:
replies reach the right callers, scripts load themselves, errors are redis-py's, a lost connection heals."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio as aioredis
import redis.exceptions

from echelon_platform.adapters.redis_lane import RedisLane
from echelon_platform.config import Settings


async def _lane(settings: Settings) -> tuple[aioredis.Redis, RedisLane]:
    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    return client, RedisLane(client)


async def test_concurrent_commands_get_their_own_replies(settings: Settings) -> None:
    client, lane = await _lane(settings)
    key = f"{settings.redis_prefix}lane:counter"
    try:
        replies = await asyncio.gather(*(lane.call("INCR", key) for _ in range(50)))
        assert sorted(replies) == list(range(1, 51))
        values = await asyncio.gather(*(lane.call("ECHO", f"v{i}") for i in range(20)))
        assert values == [f"v{i}".encode() for i in range(20)]
    finally:
        await client.delete(key)
        await lane.close()
        await client.aclose()


async def test_a_script_loads_itself_and_errors_are_redis_errors(settings: Settings) -> None:
    client, lane = await _lane(settings)
    key = f"{settings.redis_prefix}lane:value"
    # A script no other test uses, so Redis does not have it yet: the first call falls back to EVAL.
    script = lane.script(f"-- {settings.redis_prefix}\nreturn redis.call('GET', KEYS[1])")
    try:
        await client.set(key, "x")
        assert await script((key,), ()) == b"x"
        assert await script((key,), ()) == b"x"  # by its SHA now
        with pytest.raises(redis.exceptions.ResponseError):
            await lane.call("NO-SUCH-COMMAND")
        assert await lane.call("PING") == b"PONG"  # the connection is still in step
    finally:
        await client.delete(key)
        await lane.close()
        await client.aclose()


async def test_a_connection_the_server_dropped_is_replaced(settings: Settings) -> None:
    client, lane = await _lane(settings)
    try:
        lane_id = await lane.call("CLIENT", "ID")
        await client.execute_command("CLIENT", "KILL", "ID", lane_id)
        await asyncio.sleep(0.05)
        assert await lane.call("PING") == b"PONG"
        assert await lane.call("CLIENT", "ID") != lane_id
    finally:
        await lane.close()
        await client.aclose()


async def test_an_unreachable_redis_is_a_connection_error(settings: Settings) -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    lane = RedisLane(client)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await lane.call("PING")
    finally:
        await client.aclose()


async def test_a_lone_command_leaves_before_its_caller_waits(settings: Settings) -> None:
    """`begin` on an idle lane writes at once, so the caller's own work overlaps Redis's answer (POST /runs
    checks the request while its admission is in flight). Seen from another connection while this event
    loop is still busy: a command queued for the end of the loop turn would never arrive."""
    client, lane = await _lane(settings)
    key = f"{settings.redis_prefix}lane:early"
    watcher = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        assert await lane.call("PING") == b"PONG"  # connected, and idle again
        pending = lane.begin("INCR", key)
        deadline = time.monotonic() + 5
        while watcher.get(key) != b"1":  # blocks this loop on purpose: nothing else here may run
            assert time.monotonic() < deadline, "the command did not leave before the caller yielded"
        assert await pending == 1
        # Under load the commands of one turn still share a write, and every reply reaches its caller.
        assert await asyncio.gather(*(lane.call("INCR", key) for _ in range(10))) == list(range(2, 12))
    finally:
        watcher.delete(key)
        watcher.close()
        await lane.close()
        await client.aclose()
