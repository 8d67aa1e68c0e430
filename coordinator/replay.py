"""Rebuild every read model from the event log into a fresh namespace, then switch readers atomically.

Events are streamed in writer order and folded in memory (one state per run, not per event), then
written in pipelines. Catch-up and the switch happen under the projector lease, so events the live
coordinator appends meanwhile are in the new namespace too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from ulid import ULID

from echelon_platform.adapters.event_store import EventStore, LogEvent
from echelon_platform.adapters.readmodel_store import Keys, pointer_key, text
from echelon_platform.adapters.readmodel_writer import (
    CERT_TOPIC,
    RATING_TOPIC,
    Checkpoint,
    Projector,
    checkpoint_key,
    queue_rating,
    queue_writes,
    rebuilding_key,
)
from echelon_platform.domain.projections import READ_MODEL_GENERATION, RunState, apply, public_certificate

WRITE_CHUNK = 1000
PROGRESS_EVERY = 10_000
PROGRESS_TTL_MS = 30_000


@dataclass
class ReplayReport:
    namespace: str
    events: int
    runs: int
    certificates: int
    seconds: float
    differences: list[str]

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class Rebuilder:
    def __init__(self, store: EventStore, projector: Projector) -> None:
        self.store = store
        self.projector = projector
        self.states: dict[str, RunState] = {}
        self.certs: dict[str, dict[str, Any]] = {}
        self.last_seq = 0
        self.events = 0
        # What changed since the last write: the catch-up under the lease writes only that.
        self._dirty: set[str] = set()
        self._new_certs: list[dict[str, Any]] = []
        self._new_ratings: list[LogEvent] = []
        self.progress_total = 0  # set to report `n/m` progress for readiness while rebuilding

    async def fold_from_log(self) -> None:
        states, dirty = self.states, self._dirty
        async for seq, event in self.store.stream(after_seq=self.last_seq):
            self.last_seq = seq
            self.events += 1
            if event.topic == RATING_TOPIC:
                self._new_ratings.append(event)
                continue
            run_id = event.run_id
            states[run_id] = apply(states.get(run_id) or RunState(run_id=run_id), event, seq)
            dirty.add(run_id)
            if event.topic == CERT_TOPIC:
                cert = event.payload["certificate"]
                self.certs[cert["certificate_id"]] = cert
                self._new_certs.append(cert)
            if self.progress_total and self.events % PROGRESS_EVERY == 0:
                await self._report_progress()

    async def _report_progress(self) -> None:
        shown = f"{self.events}/{max(self.events, self.progress_total)}"
        await self.projector.redis.set(rebuilding_key(self.projector.prefix), shown, px=PROGRESS_TTL_MS)

    async def write(self, keys: Keys) -> None:
        states = [self.states[r] for r in self._dirty]
        ratings = self._new_ratings
        # Only a certificate that decided its run is public (not one logged after the run failed).
        certs = [c for c in self._new_certs if public_certificate(self.states[c["run_id"]], c)]
        redis = self.projector.redis
        for i in range(0, max(len(states), len(certs)), WRITE_CHUNK):
            pipe = redis.pipeline(transaction=False)
            queue_writes(pipe, keys, states[i : i + WRITE_CHUNK], certs[i : i + WRITE_CHUNK])
            await pipe.execute()
        for i in range(0, len(ratings), WRITE_CHUNK):
            pipe = redis.pipeline(transaction=False)
            for event in ratings[i : i + WRITE_CHUNK]:
                queue_rating(pipe, keys, event)
            await pipe.execute()
        self._dirty, self._new_certs, self._new_ratings = set(), [], []

    async def rebuild(self, *, switch: bool = True, held: bool = False) -> ReplayReport:
        """Fold the log into a fresh namespace; with `switch`, make it current (pointer and checkpoint).

        `held`: the caller (the writer healing its models) already holds the projector lease."""
        started = time.perf_counter()
        namespace = f"r{ULID()}"
        keys = Keys(self.projector.prefix, namespace)
        await self.fold_from_log()
        await self.write(keys)
        if switch:
            # Hold the coordinator's lease: fold what it appended meanwhile, then flip the pointer.
            if not held:
                await self.projector.acquire()
            try:
                await self.fold_from_log()
                await self.write(keys)
                old = await self.projector.namespace()
                checkpoint = Checkpoint(READ_MODEL_GENERATION, self.last_seq, namespace)
                pipe = self.projector.redis.pipeline(transaction=True)
                pipe.set(pointer_key(self.projector.prefix), namespace)
                pipe.set(checkpoint_key(self.projector.prefix), checkpoint.encode())
                pipe.delete(rebuilding_key(self.projector.prefix))
                await pipe.execute()
            finally:
                if not held:
                    await self.projector.release()
        # Timed up to the switch: readers use the rebuilt models from here on; dropping the old
        # namespace is clean-up.
        report = ReplayReport(
            namespace, self.events, len(self.states), len(self.certs), time.perf_counter() - started, []
        )
        if switch:
            await delete_namespace(self.projector, Keys(self.projector.prefix, old))
        return report


async def snapshot(projector: Projector, keys: Keys) -> dict[str, bytes]:
    """Every key of a namespace (minus the namespace name) with a canonical dump of its value."""
    redis = projector.redis
    result: dict[str, bytes] = {}
    strip = len(keys.pattern) - 1
    async for key in redis.scan_iter(match=keys.pattern, count=1000):
        kind = text(await redis.type(key))
        name = text(key)[strip:]
        if kind == "string":
            result[name] = text(await redis.get(key)).encode()
        elif kind == "hash":
            result[name] = orjson.dumps(sorted((text(k), text(v)) for k, v in (await redis.hgetall(key)).items()))
        elif kind == "zset":
            members: list[Any] = await redis.zrange(key, 0, -1, withscores=True)
            result[name] = orjson.dumps(sorted((text(m), s) for m, s in members))
    return result


def compare(live: dict[str, bytes], rebuilt: dict[str, bytes]) -> list[str]:
    differences = [f"missing in rebuild: {k}" for k in sorted(live.keys() - rebuilt.keys())]
    differences += [f"only in rebuild: {k}" for k in sorted(rebuilt.keys() - live.keys())]
    differences += [
        f"differs: {k}" for k in sorted(live.keys() & rebuilt.keys()) if _canon(live[k]) != _canon(rebuilt[k])
    ]
    return differences


def _canon(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


async def delete_namespace(projector: Projector, keys: Keys) -> int:
    deleted = 0
    batch: list[bytes] = []
    async for key in projector.redis.scan_iter(match=keys.pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await projector.redis.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await projector.redis.unlink(*batch)
    return deleted


async def verify(store: EventStore, projector: Projector) -> ReplayReport:
    """Rebuild into a scratch namespace and compare with the live one; the scratch copy is dropped."""
    rebuilder = Rebuilder(store, projector)
    await projector.acquire()  # a consistent cut: the coordinator pauses while we fold and compare
    try:
        report = await rebuilder.rebuild(switch=False)
        live_keys = await projector.keys()
        scratch = Keys(projector.prefix, report.namespace)
        report.differences = compare(await snapshot(projector, live_keys), await snapshot(projector, scratch))
    finally:
        await projector.release()
    await delete_namespace(projector, Keys(projector.prefix, report.namespace))
    return report
