"""The Redis side of a read-model rebuild: bulk writes into a namespace, the rebuild marker, the switch that
makes a namespace current, and the snapshot and clean-up of a namespace. The fold itself lives in
coordinator/rebuild.py and holds no Redis client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from echelon_platform.adapters.readmodel_store import Keys, RedisClient, millis, pointer_key, rebuilding_key, text
from echelon_platform.adapters.readmodel_writer import Checkpoint, Projector, queue_rating, queue_writes
from echelon_platform.adapters.stats_store import Change, Record, queue_stats, read_records
from echelon_platform.domain.projections import READ_MODEL_GENERATION, Event, RunState, to_record

# The switch, only while the rebuild's marker (KEYS[1]) is still there: the pointer (KEYS[2]) and every
# checkpoint (KEYS[3..]) are set and the marker deleted at once; 0 (nothing written) when it is gone.
_SWITCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[i - 1]) end
redis.call('DEL', KEYS[1])
return 1
"""
WRITE_CHUNK = 1000  # keys per pipeline


class RebuildWrites:
    """Every Redis operation a rebuild or a partition's repair makes, on the projector's client."""

    def __init__(self, projector: Projector) -> None:
        self._projector = projector

    @property
    def _redis(self) -> aioredis.Redis:
        return self._projector.redis  # read when used: the projector may open after the rebuilder is built

    async def mark(self, shown: str, *, ttl_ms: int, first: bool) -> None:
        """The rebuild marker readiness reads: set when `first`, else only refreshed (`XX`), so once the
        switch deleted it (or Redis lost it) nothing here brings it back."""
        await self._redis.set(rebuilding_key(self._projector.prefix), shown, px=ttl_ms, xx=not first)

    async def write_runs(self, keys: Keys, states: Sequence[RunState], certs: Sequence[dict[str, Any]]) -> None:
        # One pipeline in flight while the next is built and packed: Redis and Python overlap.
        pending: asyncio.Future[Any] | None = None
        try:
            for i in range(0, max(len(states), len(certs)), WRITE_CHUNK):
                pipe = self._redis.pipeline(transaction=False)
                queue_bulk(pipe, keys, states[i : i + WRITE_CHUNK])
                queue_writes(pipe, keys, [], certs[i : i + WRITE_CHUNK])
                sent = asyncio.ensure_future(pipe.execute())
                if pending is not None:
                    await pending
                pending = sent
            if pending is not None:
                await pending
        finally:
            if pending is not None and not pending.done():
                pending.cancel()

    async def write_ratings(self, keys: Keys, ratings: Sequence[Event]) -> None:
        for i in range(0, len(ratings), WRITE_CHUNK):
            pipe = self._redis.pipeline(transaction=False)
            for event in ratings[i : i + WRITE_CHUNK]:
                queue_rating(pipe, keys, event)
            await pipe.execute()

    async def write_judge_calls(self, keys: Keys, calls: Sequence[tuple[str, str, list[float]]]) -> None:
        """(run id, log position, call) triples into each run's judge-call hash."""
        for i in range(0, len(calls), WRITE_CHUNK):
            pipe = self._redis.pipeline(transaction=False)
            for run_id, seq, call in calls[i : i + WRITE_CHUNK]:
                pipe.hset(keys.judge_calls(run_id), seq, orjson.dumps(call))
            await pipe.execute()

    async def stats_records(self, keys: Keys, run_ids: list[str]) -> dict[str, Record | None]:
        return await read_records(self._redis, keys, run_ids)

    async def write_stats(self, keys: Keys, changes: Iterable[Change]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        queue_stats(pipe, keys, changes)
        await pipe.execute()

    async def switch(self, namespace: str, positions: Mapping[int, int]) -> bool:
        """Make `namespace` current: pointer, every partition's checkpoint (at `positions`) and the marker's
        end in one script, only if the marker is still there; False (nothing written) when it is gone."""
        prefix = self._projector.prefix
        checkpoints = self._projector.checkpoint_keys()
        values = [Checkpoint(READ_MODEL_GENERATION, positions.get(k, 0), namespace).encode() for k in checkpoints]
        switched = await self._redis.eval(
            _SWITCH,
            2 + len(checkpoints),
            rebuilding_key(prefix),
            pointer_key(prefix),
            *checkpoints.values(),
            namespace,
            *values,
        )
        return bool(switched)

    async def set_checkpoint(self, partition: int, checkpoint: Checkpoint) -> None:
        await self._redis.set(self._projector.checkpoint_keys()[partition], checkpoint.encode())


def queue_bulk(pipe: Any, keys: Keys, states: Sequence[RunState]) -> None:
    """`queue_writes(pipe, keys, states, [])` in a few multi-key commands (one MSET, one ZADD per index)
    instead of four commands per run: the client's per-command cost is most of a rebuild's write time.
    `verify` compares what this writes with what the live writer wrote."""
    if not states:
        return
    records: dict[str, bytes] = {}
    listed: dict[str, float] = {}
    by_user: dict[str, dict[str, float]] = {}
    active: dict[str, float] = {}
    ended: list[str] = []
    for state in states:
        run_id = state.run_id
        records[keys.run(run_id)] = orjson.dumps(to_record(state))
        if state.visible:
            score = millis(state)
            listed[run_id] = score
            by_user.setdefault(str(state.user_id), {})[run_id] = score
        if state.status.terminal:
            ended.append(run_id)
        elif state.updated_at is not None:
            active[run_id] = state.updated_at.timestamp() * 1000
    pipe.mset(records)
    if listed:
        pipe.zadd(keys.runs, listed)
    for user_id, runs in by_user.items():
        pipe.zadd(keys.user_runs(user_id), runs)
    if ended:
        pipe.zrem(keys.active, *ended)
    if active:
        pipe.zadd(keys.active, active)


async def snapshot(client: RedisClient, keys: Keys) -> dict[str, bytes]:
    """Every key of a namespace (minus the namespace name) with a canonical dump of its value.

    Strings (nearly every key) are read a thousand per MGET; only the rest need their type asked."""
    redis = client.redis
    result: dict[str, bytes] = {}
    strip = len(keys.pattern) - 1
    batch: list[bytes] = []
    # SCAN visits the whole keyspace (other namespaces too): bigger steps, fewer round trips.
    async for key in redis.scan_iter(match=keys.pattern, count=5000):
        batch.append(key)
        if len(batch) >= WRITE_CHUNK:
            await _dump(redis, batch, strip, result)
            batch = []
    await _dump(redis, batch, strip, result)
    return result


async def _dump(redis: Any, batch: list[bytes], strip: int, into: dict[str, bytes]) -> None:
    if not batch:
        return
    # MGET answers nil for a key of another type (no error): those few are read by type below.
    others: list[bytes] = []
    for key, value in zip(batch, await redis.mget(batch), strict=True):
        if value is None:
            others.append(key)
        else:
            into[text(key)[strip:]] = value
    if not others:
        return
    pipe = redis.pipeline(transaction=False)
    for key in others:
        pipe.type(key)
    kinds = [text(kind) for kind in await pipe.execute()]
    pipe = redis.pipeline(transaction=False)
    readers = {"string": pipe.get, "hash": pipe.hgetall, "zset": lambda k: pipe.zrange(k, 0, -1, withscores=True)}
    kept = [(key, kind) for key, kind in zip(others, kinds, strict=True) if kind in readers]
    for key, kind in kept:
        readers[kind](key)
    for (key, kind), value in zip(kept, await pipe.execute(), strict=True):
        name = text(key)[strip:]
        if kind == "string":
            into[name] = value
        elif kind == "hash":
            into[name] = orjson.dumps(sorted((text(k), text(v)) for k, v in value.items()))
        else:
            into[name] = orjson.dumps(sorted((text(m), score) for m, score in value))


async def delete_namespace(client: RedisClient, keys: Keys) -> int:
    redis = client.redis
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=keys.pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await redis.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await redis.unlink(*batch)
    return deleted
