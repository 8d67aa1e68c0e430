"""Writes projected read models to Redis: one read round trip and one write pipeline per batch.

Next to the models lives a checkpoint per log partition, `<prefix>checkpoint[-<partition>]` =
`<generation>:<last log position>:<namespace>`. It is written with `SET XX` in the same MULTI as the models,
so when Redis loses it (a restart without persistence, FLUSHALL) no later batch can recreate it: the writer
sees it missing, raises `ReadModelsStale`, and rebuilds from the log before projecting anything else.

Partitions hold disjoint runs, so their writers touch disjoint run keys; the shared indexes (sorted sets of
runs and certificates, rating hashes) take only commutative writes (ZADD, ZREM, keep-the-latest), so the
order in which partitions project cannot matter. Each partition has its own lock, epoch and checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from ulid import ULID

from echelon_platform.adapters.readmodel_store import (
    DEFAULT_NAMESPACE,
    Keys,
    RedisClient,
    checkpoint_key,
    lock_key,
    millis,
    pointer_key,
    text,
)
from echelon_platform.adapters.stats_store import RunInputs, keep_latest, queue_stats, read_inputs
from echelon_platform.domain.events import CertificateIssued, JudgeCalled, RatingSubmitted
from echelon_platform.domain.partitions import Partitioning
from echelon_platform.domain.projections import (
    NOT_RUN_EVENTS,
    READ_MODEL_GENERATION,
    Event,
    RunState,
    apply,
    from_record,
    public_certificate,
    to_record,
)
from echelon_platform.errors import ReadModelsStale, WriterFenced

# Compare-and-delete: release the lease only if it is still ours.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# Take the lease if free or ours, or steal it from an older epoch of the same partition: a writer killed
# while holding it would otherwise hold its successor's first batch back until the lease expires. Safe,
# because an older writer's projection is fenced by the epoch (WATCH) anyway. A holder without an epoch
# (a replay's switch) is never stolen from. Tokens are `<partition>:<epoch or ->:<id>`.
_TAKE = """
local current = redis.call('get', KEYS[1])
if current and current ~= ARGV[1] then
  local partition, epoch = string.match(current, '^(%d+):(%d+):')
  if not (partition == ARGV[3] and ARGV[4] ~= '' and tonumber(epoch) < tonumber(ARGV[4])) then
    return 0
  end
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Projected:
    runs: dict[str, RunState]  # every run the batch touched, after the batch


class RunEvent(Event, Protocol):
    @property
    def run_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    generation: int
    seq: int
    namespace: str

    def encode(self) -> bytes:
        return f"{self.generation}:{self.seq}:{self.namespace}".encode()

    @classmethod
    def decode(cls, raw: Any) -> Checkpoint | None:
        if not raw:
            return None
        generation, seq, namespace = text(raw).split(":", 2)
        return cls(int(generation), int(seq), namespace)

    @property
    def current(self) -> bool:
        return self.generation == READ_MODEL_GENERATION


def epoch_key(prefix: str, suffix: str = "") -> str:
    return f"{prefix}writer_epoch{suffix}"


def certificate_score(cert: dict[str, Any]) -> float:
    return datetime.fromisoformat(cert["timestamp"]).timestamp() * 1000


def queue_writes(
    pipe: aioredis.client.Pipeline, keys: Keys, states: Iterable[RunState], certs: Iterable[dict[str, Any]]
) -> None:
    """Queue the writes that make Redis hold `states` and `certs` (all idempotent SET/ZADD/ZREM)."""
    for state in states:
        pipe.set(keys.run(state.run_id), orjson.dumps(to_record(state)))
        if state.visible:
            score = millis(state)
            pipe.zadd(keys.runs, {state.run_id: score})
            pipe.zadd(keys.user_runs(str(state.user_id)), {state.run_id: score})
        if state.status.terminal:
            pipe.zrem(keys.active, state.run_id)
        elif state.updated_at is not None:
            pipe.zadd(keys.active, {state.run_id: state.updated_at.timestamp() * 1000})
    for cert in certs:
        cert_id, construct = cert["certificate_id"], cert["construct_id"]
        pipe.set(keys.cert(cert_id), orjson.dumps(cert))
        for order, score in (
            ("created", certificate_score(cert)),
            ("brier", float(cert["brier"])),
            ("composite", float(cert["composite_score"])),
        ):
            pipe.zadd(keys.certs_by(order), {cert_id: score})
            pipe.zadd(keys.construct_certs(construct, order), {cert_id: score})


# Keep the rating with the greatest event id (ULIDs sort by time): commutative, so order cannot matter.
_KEEP_LATEST = """
for i = 1, 2 do
  local current = redis.call('HGET', KEYS[i], ARGV[i])
  if (not current) or cjson.decode(current)['event_id'] < ARGV[3] then
    redis.call('HSET', KEYS[i], ARGV[i], ARGV[4])
  end
end
return 0
"""


def rating_record(event: Event) -> dict[str, Any]:
    """What the ratings hashes hold of a rating event."""
    p = event.payload
    return {
        "certificate_id": p["certificate_id"],
        "replay_id": p["replay_id"],
        "user_id": p["user_id"],
        "rating": p["rating"],
        "rated_at": p["rated_at"],
        "event_id": event.event_id,
    }


def judge_call(payload: Any) -> list[Any]:
    """What the judge-call hash holds of a `verify.judge.called` (keyed by log position: a redelivered call,
    whatever its event id, has its first copy's position): tokens, cost and the judge (per-judge sums)."""
    return [
        int(payload.get("input_tokens", 0)),
        int(payload.get("output_tokens", 0)),
        float(payload.get("cost_usd", 0.0)),
        str(payload.get("judge", "")),
    ]


def queue_rating(pipe: aioredis.client.Pipeline, keys: Keys, event: Event) -> None:
    p = event.payload
    value = orjson.dumps(rating_record(event))
    pipe.eval(
        _KEEP_LATEST,
        2,
        keys.ratings(p["certificate_id"]),
        keys.user_ratings(p["user_id"]),
        f"{p['replay_id']}|{p['user_id']}",
        f"{p['certificate_id']}|{p['replay_id']}",
        event.event_id,
        value,
    )


class Projector(RedisClient):
    """The coordinator's Redis writer. A short lease keeps it and the replay script's switch-over apart."""

    # Long enough for any batch or switch-over, short enough that a writer killed while holding it
    # delays its successor by seconds at most.
    LEASE_MS = 5_000

    def __init__(self, url: str, prefix: str, *, partition: int = 0, partitioning: Partitioning | None = None) -> None:
        super().__init__(url, prefix)
        self._id = str(ULID())
        self.epoch: int | None = None  # the writer epoch this projector writes for (None: unfenced)
        self.partitioning = partitioning or Partitioning()
        self.partition = partition
        self._token = self._make_token()
        suffix = self.partitioning.suffix(partition)
        self._lock = lock_key(prefix, suffix)
        self._checkpoint = checkpoint_key(prefix, suffix)
        self._epoch = epoch_key(prefix, suffix)

    def checkpoint_keys(self) -> dict[int, str]:
        """Every partition's checkpoint key (a rebuild sets them all when it switches namespaces)."""
        return {k: checkpoint_key(self.prefix, self.partitioning.suffix(k)) for k in self.partitioning.indices}

    async def claim(self, epoch: int) -> None:
        """Record a new writer epoch: from now on a projection by an older writer (one that was paused
        between its append and its projection) fails instead of overwriting newer models."""
        self.epoch = epoch
        self._token = self._make_token()
        await self.redis.set(self._epoch, epoch)

    def _make_token(self) -> bytes:
        return f"{self.partition}:{self.epoch if self.epoch is not None else '-'}:{self._id}".encode()

    async def acquire(self) -> tuple[str, Checkpoint | None]:
        """Take the lease (waiting while another writer holds it); returns the namespace and checkpoint."""
        while True:
            pipe = self.redis.pipeline(transaction=False)
            epoch = "" if self.epoch is None else str(self.epoch)
            pipe.eval(_TAKE, 1, self._lock, self._token, self.LEASE_MS, self.partition, epoch)
            pipe.get(pointer_key(self.prefix))
            pipe.get(self._checkpoint)
            taken, ns, checkpoint = await pipe.execute()
            if taken:
                return (text(ns) if ns else DEFAULT_NAMESPACE), Checkpoint.decode(checkpoint)
            await asyncio.sleep(0.05)  # the replay script holds it for a moment while switching

    @asynccontextmanager
    async def holding(self, partitions: Iterable[int] | None = None) -> AsyncIterator[None]:
        """Hold the locks of `partitions` (default: all), taken in partition order so two holders cannot
        deadlock, and kept alive however long the body takes: a rebuild switches, `verify` compares and a
        partition is repaired while those writers do not project."""
        chosen = sorted(self.partitioning.indices if partitions is None else set(partitions))
        keys = [lock_key(self.prefix, self.partitioning.suffix(k)) for k in chosen]
        taken: list[str] = []
        refresher: asyncio.Task[None] | None = None
        try:
            epoch = "" if self.epoch is None else str(self.epoch)
            for k, key in zip(chosen, keys, strict=True):
                while not await self.redis.eval(_TAKE, 1, key, self._token, self.LEASE_MS, k, epoch):  # noqa: ASYNC110 - a lock in Redis
                    await asyncio.sleep(0.05)  # a writer's batch holds it for milliseconds
                taken.append(key)
            refresher = asyncio.create_task(self._keep(taken))
            yield
        finally:
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            if taken:
                pipe = self.redis.pipeline(transaction=False)
                for key in taken:
                    pipe.eval(_RELEASE, 1, key, self._token)
                await pipe.execute()

    async def _keep(self, keys: list[str]) -> None:
        while True:
            await asyncio.sleep(self.LEASE_MS / 3000)
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.pexpire(key, self.LEASE_MS)
            await pipe.execute()

    async def checkpoint(self) -> Checkpoint | None:
        return Checkpoint.decode(await self.redis.get(self._checkpoint))

    async def project(self, events: Sequence[tuple[RunEvent, int]]) -> Projected:
        """Apply (event, log position) pairs. ReadModelsStale when the models must be rebuilt first."""
        ns, checkpoint = await self.acquire()
        try:
            if checkpoint is None or not checkpoint.current or checkpoint.namespace != ns:
                raise ReadModelsStale("read models have no current checkpoint: rebuilding them from the log")
            keys = Keys(self.prefix, ns)
            run_events = [
                (e, seq) for e, seq in events if e.topic != RatingSubmitted.TOPIC and e.topic not in NOT_RUN_EVENTS
            ]
            run_ids = list(dict.fromkeys(e.run_id for e, _ in run_events))
            async with self.redis.pipeline(transaction=True) as pipe:
                # WATCH the writer epoch: if a newer writer claims it before EXEC, nothing is written.
                await pipe.watch(self._epoch)
                epoch, *raws = await pipe.mget([self._epoch, *(keys.run(r) for r in run_ids)])
                if self.epoch is not None and epoch is not None and int(epoch) != self.epoch:
                    raise WriterFenced(f"writer epoch {self.epoch} was superseded by {int(epoch)}")
                states = {
                    r: from_record(orjson.loads(raw)) if raw else RunState(run_id=r)
                    for r, raw in zip(run_ids, raws, strict=True)
                }
                certs = []
                for event, seq in run_events:
                    states[event.run_id] = apply(states[event.run_id], event, seq)
                    if event.topic == CertificateIssued.TOPIC:
                        certs.append((event.run_id, event.payload["certificate"]))
                public = [c for r, c in certs if public_certificate(states[r], c)]
                changes = await self._stats_changes(keys, events, states, public)
                pipe.multi()  # type: ignore[no-untyped-call]
                self._queue_batch(pipe, keys, checkpoint, events, states, public)
                queue_stats(pipe, keys, changes)
                try:
                    await pipe.execute()
                except redis.exceptions.WatchError as exc:
                    raise WriterFenced("a newer writer took over during this projection") from exc
        except BaseException:
            await self.release()
            raise
        return Projected(runs=states)

    async def _stats_changes(
        self,
        keys: Keys,
        events: Sequence[tuple[RunEvent, int]],
        states: dict[str, RunState],
        public: list[dict[str, Any]],
    ) -> list[tuple[str, Any, Any]]:
        """Every touched run's leaderboard record before and after the batch. The inputs are read outside the
        MULTI: this partition's lock makes this writer the only one touching its runs' records."""
        ratings = [(e, seq) for e, seq in events if e.topic == RatingSubmitted.TOPIC]
        others = [e.run_id for e, _ in ratings if e.run_id not in states]
        if others:  # runs only rated in this batch: their state as stored (unknown ones count nowhere)
            raws = await self.redis.mget([keys.run(r) for r in others])
            rated = {r: from_record(orjson.loads(raw)) for r, raw in zip(others, raws, strict=True) if raw}
        else:
            rated = {}
        touched = {**states, **rated}
        inputs: dict[str, RunInputs] = await read_inputs(self.redis, keys, touched)
        by_id = {c["certificate_id"]: c for c in public}
        for run_id, state in touched.items():
            if state.certificate_id in by_id:
                inputs[run_id].certificate = by_id[state.certificate_id]
        for event, seq in events:
            run_input = inputs.get(event.run_id)
            if run_input is None:
                continue
            if event.topic == JudgeCalled.TOPIC:
                run_input.judge[str(seq)] = judge_call(event.payload)
            elif (
                event.topic == RatingSubmitted.TOPIC
                and event.payload["certificate_id"] == touched[event.run_id].certificate_id
            ):
                keep_latest(run_input.ratings, rating_record(event))
        return [(r, i.record, i.contribution(touched[r])) for r, i in inputs.items()]

    def _queue_batch(
        self,
        pipe: aioredis.client.Pipeline,
        keys: Keys,
        checkpoint: Checkpoint,
        events: Sequence[tuple[RunEvent, int]],
        states: dict[str, RunState],
        certs: list[dict[str, Any]],
    ) -> None:
        """Queue every write of one batch, the checkpoint advance and the lease release (one MULTI)."""
        queue_writes(pipe, keys, states.values(), certs)
        for event, seq in events:
            if event.topic == RatingSubmitted.TOPIC:
                queue_rating(pipe, keys, event)
            elif event.topic == JudgeCalled.TOPIC:
                pipe.hset(keys.judge_calls(event.run_id), str(seq), orjson.dumps(judge_call(event.payload)))
        last = max([checkpoint.seq, *(seq for _, seq in events)])
        advanced = Checkpoint(READ_MODEL_GENERATION, last, checkpoint.namespace)
        pipe.set(self._checkpoint, advanced.encode(), xx=True)
        pipe.eval(_RELEASE, 1, self._lock, self._token)

    async def release(self) -> None:
        await self.redis.eval(_RELEASE, 1, self._lock, self._token)
