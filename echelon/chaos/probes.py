"""How the chaos supervisor tells a component is healthy again, each by talking to it (never by waiting)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import nats
import nats.errors
import nats.js.errors
import redis.asyncio as aioredis
import redis.exceptions

from echelon.chaos.cluster import Cluster

Probe = Callable[[], Awaitable[bool]]
# Connection errors of the probes' clients: each means "not yet".
PROBE_ERRORS = (
    OSError,
    TimeoutError,
    httpx.HTTPError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    nats.errors.Error,
    nats.js.errors.Error,
    redis.exceptions.RedisError,
)


async def until(probe: Probe, deadline_s: float, interval_s: float = 0.05) -> float | None:
    """Seconds until probe() is true (None at the deadline); probe errors count as false."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            if await asyncio.wait_for(probe(), timeout=max(1.0, interval_s * 20)):
                return time.monotonic() - started
        except PROBE_ERRORS:
            pass
        await asyncio.sleep(interval_s)
    return None


def api_healthy(world: Cluster, http: httpx.AsyncClient) -> Probe:
    async def probe() -> bool:
        return (await http.get(f"{world.api_url}/healthz", timeout=1.0)).status_code == 200

    return probe


def redis_answers(world: Cluster) -> Probe:
    async def probe() -> bool:
        client = aioredis.Redis.from_url(str(world.settings.redis_url), socket_timeout=1.0)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    return probe


def nats_answers(world: Cluster) -> Probe:
    async def probe() -> bool:
        nc = await nats.connect(str(world.settings.nats_url), connect_timeout=1, max_reconnect_attempts=0)
        try:
            await nc.jetstream().stream_info(world.settings.stream_name)
            return True
        finally:
            await nc.close()

    return probe


def writer_elected(world: Cluster, after_epoch: int) -> Probe:
    """A live coordinator of ours holds a lease epoch newer than after_epoch."""

    async def probe() -> bool:
        lease = await world.leader()
        return lease is not None and lease[0] > after_epoch and world.role_of_holder(lease[1]) is not None

    return probe


def standbys_ready(world: Cluster, count: int = 2) -> Probe:
    """Every coordinator holds its dedicated lease connection (the leader its lock, standbys polling)."""

    async def probe() -> bool:
        conn = await asyncpg.connect(world.database_url)
        try:
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
                f"echelon-writer:{world.settings.lease_name(0)}",
            )
        finally:
            await conn.close()
        return int(n) >= count

    return probe


def stage_consuming(world: Cluster, stage: str, since: float) -> Probe:
    """The stage's durable consumer has a pull request waiting (or delivered something) from a process started
    after `since`: pulls of a killed process expire within the fetch timeout, so probing starts later."""
    durable = f"{world.settings.consumer_prefix}-{stage}"
    baseline: list[int] = []

    async def probe() -> bool:
        if time.monotonic() < since + 2 * world.settings.fetch_timeout_s + 0.2:
            return False
        nc = await nats.connect(str(world.settings.nats_url), connect_timeout=1, max_reconnect_attempts=0)
        try:
            info = await nc.jetstream().consumer_info(world.settings.stream_name, durable)
        finally:
            await nc.close()
        delivered = int(info.delivered.consumer_seq or 0)
        if not baseline:
            baseline.append(delivered)
        return bool(info.num_waiting) or delivered > baseline[0]

    return probe
