"""Rebuild every read model from the event log into a fresh namespace, then switch readers atomically.

Events are streamed in writer order and folded in memory (one state per run, not per event), then
written in pipelines. Catch-up and the switch happen under every partition's projector lease, so events the
live writers append meanwhile are in the new namespace too. Positions are tracked per partition: each
partition's positions are in commit order, the log's as a whole are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from ulid import ULID

from coordinator.admission import TrustedKeys
from coordinator.rebuild_fold import PAYLOAD_TOPICS, RunFold
from echelon_platform.adapters.event_store import EventStore
from echelon_platform.adapters.readmodel_rebuild import WRITE_CHUNK, RebuildWrites
from echelon_platform.adapters.readmodel_rebuild import delete_namespace as delete_namespace  # callers' import path
from echelon_platform.adapters.readmodel_rebuild import snapshot as snapshot
from echelon_platform.adapters.readmodel_store import Keys
from echelon_platform.adapters.readmodel_writer import Checkpoint, Projector, judge_call, rating_record
from echelon_platform.adapters.stats_store import keep_latest
from echelon_platform.config import Settings
from echelon_platform.domain.events import CertificateIssued, JudgeCalled, RatingSubmitted
from echelon_platform.domain.projections import (
    NOT_RUN_EVENTS,
    READ_MODEL_GENERATION,
    RunState,
    public_certificate,
)
from echelon_platform.domain.stats import contribution, judge_split, judge_totals
from echelon_platform.domain.values import CalibrationCertificate
from echelon_platform.errors import ReadModelsStale
from echelon_platform.ports.log import LogEvent, LogReader

log = structlog.get_logger(__name__)

READ_BATCH = 10_000  # rows per cursor round trip
_READ = (*PAYLOAD_TOPICS, RatingSubmitted.TOPIC, JudgeCalled.TOPIC)  # the topics whose payload a rebuild reads
PROGRESS_EVERY = 10_000
PROGRESS_TTL_MS = 30_000


@dataclass
class RebuildReport:
    namespace: str
    events: int
    runs: int
    certificates: int
    seconds: float
    differences: list[str]

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@contextmanager
def _collector_paused() -> Iterator[None]:
    """A rebuild allocates millions of objects and frees none that form cycles: the cycle collector would
    only re-scan the growing fold, again and again (a third of the fold's time at a million events)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Rebuilder:
    """`only`: fold one partition's events (a partition's repair); else the whole log."""

    def __init__(self, store: LogReader, projector: Projector, keys: TrustedKeys, *, only: int | None = None) -> None:
        self.store = store
        self.projector = projector
        self.writes = RebuildWrites(projector)
        self.only = only
        # A log written before the writer checked signatures may hold a certificate no published key signed:
        # it is folded as if absent, so it is never listed, ranked or shown.
        self.keys = keys
        self.skipped_certificates = 0
        self._runs: dict[str, RunFold] = {}
        self.certs: dict[str, dict[str, Any]] = {}
        self.positions: dict[int, int] = {}  # partition → last log position folded
        self._read_all = False  # after the first full read, catch up per partition
        self.events = 0
        # What changed since the last write: the catch-up under the lease writes only that.
        self._dirty: set[str] = set()
        self._new_certs: list[dict[str, Any]] = []
        self._new_ratings: list[LogEvent] = []
        # The leaderboard's inputs besides states and certificates (see domain/stats.py): latest ratings per
        # certificate, judge calls per run, and the runs whose record may have changed since the last write.
        self._ratings: dict[str, dict[str, Any]] = {}
        self._judge: dict[str, dict[str, list[Any]]] = {}
        self._new_judge: list[tuple[str, str, list[Any]]] = []
        self._stats_dirty: set[str] = set()
        self.progress_total = 0  # the log's size, for the marker's `n/m` progress
        self._marking = False  # a switching rebuild is under way: its marker is kept up to date

    async def fold_from_log(self) -> None:
        """Fold what the log appended since the last call (raw rows, batch by batch; see RunFold)."""
        runs, dirty, certs, positions = self._runs, self._dirty, self.certs, self.positions
        loads = orjson.loads
        after = None
        if self.only is not None:
            after = {self.only: positions.get(self.only, 0)}
        elif self._read_all:
            after = {k: positions.get(k, 0) for k in self.projector.partitioning.indices} | positions
        self._read_all = True
        # Read the keys before the cursor holds a connection: mid-fold, only an unknown key id reads again.
        await self.keys.for_ids(())
        async for rows in self.store.stream_rows(positions=after, batch=READ_BATCH, payload_topics=_READ):
            for seq, event_id, at, topic, correlation_id, raw, partition in rows:
                positions[partition] = seq
                payload = loads(raw) if raw is not None else None
                if topic == RatingSubmitted.TOPIC:
                    rating = LogEvent(event_id, at, topic, correlation_id, payload or {})
                    self._new_ratings.append(rating)
                    keep_latest(self._ratings.setdefault(rating.payload["certificate_id"], {}), rating_record(rating))
                    self._stats_dirty.add(rating.run_id)
                    continue
                if topic in NOT_RUN_EVENTS:  # a registry's event, not a run's: no phantom run
                    continue
                if (
                    topic == CertificateIssued.TOPIC
                    and payload is not None
                    and not await self._genuine(payload, seq, event_id)
                ):
                    continue
                run_id = correlation_id.removeprefix("run-")
                run = runs.get(run_id)
                if run is None:
                    run = runs[run_id] = RunFold(run_id)
                run.add(topic, at, payload, seq)
                dirty.add(run_id)
                if topic == JudgeCalled.TOPIC and payload is not None:
                    call = judge_call(payload)
                    self._judge.setdefault(run_id, {})[str(seq)] = call
                    self._new_judge.append((run_id, str(seq), call))
                elif topic == CertificateIssued.TOPIC and payload is not None:
                    cert = payload["certificate"]
                    certs[cert["certificate_id"]] = cert
                    self._new_certs.append(cert)
            before, self.events = self.events, self.events + len(rows)
            if self._marking and before // PROGRESS_EVERY != self.events // PROGRESS_EVERY:
                await self._report_progress()

    async def _genuine(self, payload: dict[str, Any], seq: int, event_id: str) -> bool:
        document = payload.get("certificate")
        if not isinstance(document, dict):
            return False
        refusal = await self.keys.refusal(document, event_id)
        if refusal is not None:
            # As logged it may lack fields with defaults: judge it as readers see it (what /verify checks).
            with contextlib.suppress(ValidationError):
                as_read = CalibrationCertificate.model_validate(document).model_dump(mode="json")
                refusal = await self.keys.refusal(as_read)
        if refusal is None:
            return True
        self.skipped_certificates += 1
        log.warning("rebuild.certificate_skipped", seq=seq, reason=refusal)
        return False

    @property
    def states(self) -> dict[str, RunState]:
        """Every run folded so far (built from the accumulators; the writer reads it after a rebuild)."""
        return {run_id: run.state() for run_id, run in self._runs.items()}

    async def _report_progress(self, *, first: bool = False) -> None:
        """The rebuild marker readiness reads (`rebuilding_key`): set once before the fold starts, then only
        refreshed (`XX`): once the switch deleted it (or Redis lost it), nothing here can bring it back."""
        if self.only is not None:
            return  # a partition's repair writes the live namespace in place: no marker
        shown = f"{self.events}/{max(self.events, self.progress_total)}"
        await self.writes.mark(shown, ttl_ms=PROGRESS_TTL_MS, first=first)

    async def _keep_marked(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_TTL_MS / 3000)
            await self._report_progress()

    async def write(self, keys: Keys) -> None:
        built = {run_id: self._runs[run_id].state() for run_id in self._dirty}
        states = list(built.values())
        ratings = self._new_ratings
        # Only a certificate that decided its run is public (not one logged after the run failed).
        certs = [c for c in self._new_certs if public_certificate(built[c["run_id"]], c)]
        await self.writes.write_runs(keys, states, certs)
        await self.writes.write_ratings(keys, ratings)
        await self._write_stats(keys, built)
        self._dirty, self._new_certs, self._new_ratings = set(), [], []

    async def _write_stats(self, keys: Keys, built: dict[str, RunState]) -> None:
        """Judge calls, then every changed run's leaderboard record, moving the aggregates by (new − old)
        against what `keys` holds: nothing in a fresh namespace, the live records in a partition's repair."""
        await self.writes.write_judge_calls(keys, self._new_judge)
        touched = sorted((self._dirty | self._stats_dirty) & self._runs.keys())
        for i in range(0, len(touched), WRITE_CHUNK):
            chunk = touched[i : i + WRITE_CHUNK]
            old = await self.writes.stats_records(keys, chunk)
            changes = []
            for run_id in chunk:
                state = built[run_id] if run_id in built else self._runs[run_id].state()
                cert = self.certs.get(state.certificate_id) if state.certificate_id is not None else None
                ratings = self._ratings.get(state.certificate_id, {}) if state.certificate_id is not None else {}
                calls = list(self._judge.get(run_id, {}).values())
                record = contribution(state, cert, ratings.values(), judge_totals(calls), judge_split(calls))
                changes.append((run_id, old[run_id], record))
            await self.writes.write_stats(keys, changes)
        self._new_judge, self._stats_dirty = [], set()

    async def rebuild(self, *, switch: bool = True) -> RebuildReport:
        """Fold the log into a fresh namespace; with `switch`, make it current (pointer and every
        partition's checkpoint)."""
        started = time.perf_counter()
        namespace = f"r{ULID()}"
        keys = Keys(self.projector.prefix, namespace)
        keeper: asyncio.Task[None] | None = None
        if switch:
            # Marked before anything is read: readiness and the API's reads never take the old namespace
            # for the log's state while this runs (the switch below clears the marker with the checkpoints).
            await self._report_progress(first=True)
            self._marking = True
            keeper = asyncio.create_task(self._keep_marked())
        try:
            with _collector_paused():
                await self.fold_from_log()
                await self.write(keys)
            old = await self._switch(keys) if switch else None
        finally:
            self._marking = False
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
        # Timed up to the switch: readers use the rebuilt models from here on; dropping the old
        # namespace is clean-up.
        report = RebuildReport(
            namespace, self.events, len(self._runs), len(self.certs), time.perf_counter() - started, []
        )
        if old is not None:
            await delete_namespace(self.projector, Keys(self.projector.prefix, old))
        return report

    async def _switch(self, keys: Keys) -> str:
        """Make `keys`'s namespace current: pointer, every checkpoint and the marker's end in one script,
        only if the marker is still there (else ReadModelsStale); returns the namespace it replaced."""
        namespace = keys.ns
        # Hold every partition's lease: fold what the writers appended meanwhile, then flip the pointer.
        async with self.projector.holding():
            await self.fold_from_log()
            await self.write(keys)
            old = await self.projector.namespace()
            switched = await self.writes.switch(namespace, self.positions)
        if not switched:
            # The marker set before the fold is gone: Redis lost what this rebuild wrote (a FLUSHALL, a restart)
            # or it stalled past the marker's lifetime. Switching now would make partial models current.
            raise ReadModelsStale("the read models were lost while they were rebuilt: rebuild again")
        return old


async def repair_partition(
    store: EventStore, projector: Projector, partition: int, settings: Settings
) -> RebuildReport:
    """Refold one partition's events and rewrite its runs, certificates and ratings in the live namespace,
    then its checkpoint. Its writer pauses meanwhile (its lock is held); the other partitions go on. Keys the
    log does not determine (a stray key) are left as they are: a full rebuild drops those."""
    started = time.perf_counter()
    rebuilder = Rebuilder(store, projector, TrustedKeys.published(store, settings), only=partition)
    async with projector.holding([partition]):
        keys = await projector.keys()
        await rebuilder.fold_from_log()
        await rebuilder.write(keys)
        checkpoint = Checkpoint(READ_MODEL_GENERATION, rebuilder.positions.get(partition, 0), keys.ns)
        await rebuilder.writes.set_checkpoint(partition, checkpoint)
    return RebuildReport(
        keys.ns, rebuilder.events, len(rebuilder.states), len(rebuilder.certs), time.perf_counter() - started, []
    )


def compare(live: dict[str, bytes], rebuilt: dict[str, bytes]) -> list[str]:
    differences = [f"missing in rebuild: {k}" for k in sorted(live.keys() - rebuilt.keys())]
    differences += [f"only in rebuild: {k}" for k in sorted(rebuilt.keys() - live.keys())]
    # Equal bytes are equal values: only the rest are parsed (JSON written in another key order is equal).
    differences += [
        f"differs: {k}"
        for k in sorted(live.keys() & rebuilt.keys())
        if live[k] != rebuilt[k] and _canon(live[k]) != _canon(rebuilt[k])
    ]
    return differences


def _canon(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


async def verify(store: EventStore, projector: Projector, settings: Settings) -> RebuildReport:
    """Rebuild into a scratch namespace and compare with the live one; the scratch copy is dropped."""
    rebuilder = Rebuilder(store, projector, TrustedKeys.published(store, settings))
    async with projector.holding():  # a consistent cut: every writer pauses while we fold and compare
        report = await rebuilder.rebuild(switch=False)
        live_keys = await projector.keys()
        scratch = Keys(projector.prefix, report.namespace)
        report.differences = compare(await snapshot(projector, live_keys), await snapshot(projector, scratch))
    await delete_namespace(projector, Keys(projector.prefix, report.namespace))
    return report
