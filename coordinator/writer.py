"""The single-writer StateCoordinator: fetch a batch → append (one tx) → project (one pipeline) → ack."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import asyncpg
import nats.errors
import nats.js.errors
import redis.exceptions
import structlog
from nats.aio.msg import Msg

from coordinator.admission import Admission, Refusal
from coordinator.rebuild import Rebuilder
from echelon_platform.adapters.bus import Bus, message_pending, message_sequence
from echelon_platform.adapters.bus_puller import BatchPuller
from echelon_platform.adapters.event_store import TRANSIENT_ERRORS, AppendResult, EventStore, Fence
from echelon_platform.adapters.readmodel_writer import Projected, Projector, RunEvent
from echelon_platform.adapters.secret_store import SecretStore
from echelon_platform.adapters.writer_lease import WriterLease
from echelon_platform.domain.admission import check_event
from echelon_platform.domain.envelope import Envelope, utcnow
from echelon_platform.domain.events import RunCertifying, Subjects, make_event, parse_payload
from echelon_platform.domain.lifecycle import CERTIFY_TRIGGERS
from echelon_platform.domain.projections import RunState
from echelon_platform.errors import (
    BusError,
    EnvelopeError,
    InfrastructureError,
    ReadModelsStale,
    StoreError,
    WriterFenced,
)
from echelon_platform.metrics import Metrics
from echelon_platform.retry import Backoff, retry_forever

log = structlog.get_logger(__name__)
T = TypeVar("T")

CATCH_UP_CHUNK = 1000
IDLE_CHECK_S = 1.0
STALL_S = 5.0


@dataclass
class CoordinatorStats:
    batches: int = 0
    received: int = 0
    appended: int = 0
    duplicates: int = 0
    projected: int = 0
    parked: int = 0
    lag: int = 0


RETRY_HEADER = "Echelon-Retry-Of"
DEFERRED_RETRY_S = 1.0  # an event handed back (its run's request not logged yet) comes again after this


@dataclass(frozen=True, slots=True)
class _Decoded:
    events: list[tuple[Envelope, int]]
    parked: list[tuple[int, str, bytes, str]]
    retried: list[int]  # parked rows an operator re-drove (marked in the same transaction)
    deferred: list[int] = field(default_factory=list)  # handed back to the stream (see _park_refused)


def decode_batch(msgs: Sequence[Msg], subjects: Subjects | None = None) -> _Decoded:
    """Split a batch into valid events and poison (with the reason it was refused). With `subjects` of a
    partitioned log, an event published on another partition than its run's is poison too: logging it here
    would put one run's events under two writers, out of order. With `subjects`, an event must also travel
    on exactly its own subject, carry its natural dedup key and fit its topic's size (`check_event`)."""
    partitioned = subjects if subjects is not None and subjects.partitioning.partitioned else None
    events: list[tuple[Envelope, int]] = []
    parked: list[tuple[int, str, bytes, str]] = []
    retried: list[int] = []
    for msg in msgs:
        seq = message_sequence(msg)
        retry_of = (msg.headers or {}).get(RETRY_HEADER)
        if retry_of and retry_of.isdigit():
            retried.append(int(retry_of))
        try:
            envelope = Envelope.from_wire(msg.data)
            payload = parse_payload(envelope)
            if partitioned is not None:
                _check_partition(partitioned, msg.subject, envelope)
            if subjects is not None:
                check_event(msg.subject, len(msg.data), envelope, payload, subjects)
        except EnvelopeError as exc:
            parked.append((seq, msg.subject, bytes(msg.data), str(exc)))
            continue
        events.append((envelope, seq))
    return _Decoded(events, parked, retried)


def _check_partition(subjects: Subjects, subject: str, envelope: Envelope) -> None:
    published = subjects.partition_of_subject(subject)
    owner = subjects.partitioning.of_run(envelope.run_id)
    if published != owner:
        raise EnvelopeError(
            f"published on partition {published} but run {envelope.run_id} belongs to partition {owner} "
            f"(publish on {subjects.for_event(envelope)})"
        )


class StateCoordinator:
    """Applies every event, in stream order, exactly once in effect. The only writer of domain state."""

    def __init__(
        self,
        *,
        bus: Bus,
        store: EventStore,
        projector: Projector,
        metrics: Metrics,
        durable: str,
        batch_size: int = 256,
        fetch_timeout_s: float = 0.5,
        ack_wait_s: float = 60.0,
        secrets: SecretStore | None = None,
        fence: Fence | None = None,
        lease: WriterLease | None = None,
        partition: int = 0,
        admission: Admission,
        unknown_run_grace_s: float = 30.0,
    ) -> None:
        self.bus = bus
        self.store = store
        self.projector = projector
        self.metrics = metrics
        self.durable = durable
        self.batch_size = batch_size
        self.fetch_timeout_s = fetch_timeout_s
        self.ack_wait_s = ack_wait_s
        self.secrets = secrets
        self.fence = fence  # set while this process holds the writer lease
        self.lease = lease  # when given, run() consumes only while holding it (else stands by)
        self.partition = partition  # the log partition this writer appends (its events' subjects)
        self.filter_subject = bus.subjects.partition_filter(partition)
        self.admission = admission
        self.unknown_run_grace_s = unknown_run_grace_s
        self.stats = CoordinatorStats()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop fetching; the batch in hand is finished (appended, projected, acked) first."""
        self._stopping.set()

    @property
    def stopping(self) -> asyncio.Event:
        return self._stopping

    async def run(self, *, until_idle: bool = False) -> CoordinatorStats:
        """Stand by until this process holds the writer lease, consume while it does, and stand by again
        when it is lost (another process was elected). Without a lease: consume straight away."""
        if self.lease is None:
            await self._consume(until_idle, asyncio.Event())
            return self.stats
        while not self._stopping.is_set():
            log.info("coordinator.standby", partition=self.lease.partition, holder=self.lease.holder)
            fence = await self.lease.acquire(self._stopping)
            if fence is None:
                break
            self.fence = fence
            self.projector.epoch = fence.epoch
            log.info("coordinator.leader", epoch=fence.epoch, partition=fence.partition)
            await self._retry("claim", functools.partial(self.projector.claim, fence.epoch))
            floor = await self._retry(
                "rewind",
                lambda: self.bus.rewind_consumer(
                    self.durable, self.filter_subject, ack_wait_s=self.ack_wait_s, max_deliver=-1
                ),
            )
            log.info("coordinator.resuming", from_stream_seq=floor + 1)
            try:
                finished = await self._consume(until_idle, self.lease.lost)
            finally:
                self.fence = None
                await self.lease.release()
            if finished:
                break
            log.warning("coordinator.leadership_lost", partition=fence.partition, epoch=fence.epoch)
        return self.stats

    async def _consumer_exists(self) -> bool:
        try:
            return await self.bus.consumer_exists(self.durable)
        except InfrastructureError:
            return True  # NATS cannot say right now: the fetch errors will tell

    async def _consume(self, until_idle: bool, lost: asyncio.Event) -> bool:
        """The batch loop; False when leadership was lost (then nothing uncommitted is acked).

        Two batches are in hand at most: while batch N is projected, announced and acked (`finishing`),
        batch N+1 is decoded and appended. Appends stay strictly in order, and so do projections (N's is
        awaited before N+1's starts); the two only overlap, each on its own server."""
        sub: BatchPuller | None = None
        backoff = Backoff()
        prefetched: asyncio.Task[list[Msg]] | None = None
        finishing: asyncio.Task[None] | None = None
        await self.heal()  # as the leader: the read models are level with the log before anything new
        checked = time.monotonic()
        leading = True
        while not self._stopping.is_set():
            if lost.is_set():
                leading = False
                break
            if sub is None:
                try:
                    await self.bus.ensure_consumer(
                        self.durable, self.filter_subject, ack_wait_s=self.ack_wait_s, max_deliver=-1
                    )
                    sub = await BatchPuller(self.bus.nc, stream=self.bus.stream, durable=self.durable).start()
                    backoff.reset()
                except InfrastructureError as exc:
                    log.warning("coordinator.subscribe_failed", error=str(exc))
                    await backoff.wait(self._stopping)
                    continue
            fetch = prefetched or asyncio.ensure_future(sub.fetch(self.batch_size, timeout=self.fetch_timeout_s))
            prefetched = None
            try:
                msgs = await fetch
            except (nats.errors.Error, nats.js.errors.Error, OSError, BusError) as exc:
                # Server restarted / consumer lost: re-create the pull subscription after a pause.
                log.warning("coordinator.fetch_failed", error=str(exc) or type(exc).__name__)
                await _quiet_unsubscribe(sub)
                sub = None
                await backoff.wait(self._stopping)
                continue
            backoff.reset()
            if not msgs:
                # An empty fetch is normal: nothing to do right now. Meanwhile notice lost read models
                # (a Redis restart or flush) even when no event arrives to find out.
                leading = await _settle(finishing)
                finishing = None
                if not leading:
                    break
                self._set_lag(0)
                if time.monotonic() - checked > IDLE_CHECK_S:
                    checked = time.monotonic()
                    await self.heal()
                    if not await self._consumer_exists():
                        # Deleted: NATS 2.9 answers a pull from it with nothing at all. Re-create it (the
                        # coordinator may; SetupMissing ends the process when the stream itself is gone).
                        log.warning("coordinator.consumer_gone", durable=self.durable)
                        await _quiet_unsubscribe(sub)
                        sub = None
                        continue
                if until_idle:
                    break
                continue
            if lost.is_set():
                await _nak_all(msgs)  # fetched after leadership ended: straight back for the new leader
                leading = False
                break
            if len(msgs) == self.batch_size:
                # A full batch means more is waiting: fetch the next one while this one is written.
                # Batches are still applied strictly one after another, in stream order.
                prefetched = asyncio.ensure_future(sub.fetch(self.batch_size, timeout=self.fetch_timeout_s))
            try:
                committed = await self._commit(msgs)
            except WriterFenced as exc:
                # Another writer took over: nothing of this batch was committed, so none of it is acked.
                log.warning("coordinator.fenced", error=str(exc))
                await _nak_all(msgs)
                await _settle(finishing)
                finishing = None
                leading = False
                break
            if not await _settle(finishing):
                await _nak_all(msgs)  # appended, never projected here: the new leader does both again
                finishing = None
                leading = False
                break
            finishing = asyncio.ensure_future(self._finish(committed))
        if not await _settle(finishing):
            leading = False
        await _release_prefetched(prefetched)
        await _quiet_unsubscribe(sub)
        return leading

    async def _commit(self, msgs: list[Msg]) -> _Committed:
        """Decode a batch, check it against the log and the signing keys, and append it (one transaction)."""
        started = time.perf_counter()
        decoded = decode_batch(msgs, self.bus.subjects)
        refused = await self._retry("check", lambda: self.admission.check(decoded.events))
        _park_refused(decoded, msgs, refused, self.unknown_run_grace_s)
        result = await self._retry("append", lambda: self._append(decoded))
        self.admission.logged(decoded.events)
        return _Committed(msgs, decoded, result, started)

    async def _finish(self, committed: _Committed) -> None:
        """Project an appended batch, announce certify work, then ack it. WriterFenced: a newer writer took
        over before the projection; nothing is acked (the messages come back to it)."""
        try:
            await self._project_and_ack(committed)
        except WriterFenced:
            await _nak_all(committed.msgs)
            raise

    async def _project_and_ack(self, committed: _Committed) -> None:
        msgs, decoded, result, started = committed
        winners = [(env, result.winners[env.event_id]) for env, _ in decoded.events if env.event_id in result.winners]
        if winners:
            projected = await self._project(winners)
            await self._announce_certifying(
                projected.runs, {e.run_id: e.event_id for e, _ in winners if e.topic in CERTIFY_TRIGGERS}
            )
            await self._forget_secrets(projected.runs)
        # Ack only now: the events are committed in Postgres and visible in Redis.
        for msg, (seq, subject, _, reason) in _poison_msgs(msgs, decoded):
            log.error("coordinator.parked", stream_seq=seq, subject=subject, reason=reason)
            await msg.term()
        accepted = msgs
        if decoded.parked or decoded.deferred:
            held = {p[0] for p in decoded.parked} | set(decoded.deferred)
            accepted = [m for m in msgs if message_sequence(m) not in held]
        for msg in msgs:
            if message_sequence(msg) in decoded.deferred:
                log.info(
                    "coordinator.deferred",
                    stream_seq=message_sequence(msg),
                    reason="its run's request is not logged yet",
                )
                await msg.nak(delay=DEFERRED_RETRY_S)
        for msg in accepted:
            await msg.ack()
        s = self.stats
        s.batches += 1
        s.received += len(msgs)
        s.appended += result.inserted
        s.duplicates += len(decoded.events) - result.inserted
        s.projected += len(winners)
        s.parked += len(decoded.parked)
        self.metrics.events_appended.inc(result.inserted)
        self.metrics.events_duplicate.inc(len(decoded.events) - result.inserted)
        self.metrics.events_projected.inc(len(winners))
        self.metrics.events_parked.inc(len(decoded.parked))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self._set_lag(message_pending(msgs[-1]))

    async def _append(self, decoded: _Decoded) -> Any:
        try:
            return await self.store.append_batch(
                decoded.events, decoded.parked, decoded.retried, fence=self.fence, partition=self.partition
            )
        except StoreError as exc:
            if not isinstance(exc.__cause__, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError):
                raise
        # A value Postgres refuses (e.g. a NUL character in JSON): find and park the culprits one by one.
        ok: list[tuple[Envelope, int]] = []
        parked = list(decoded.parked)
        for env, seq in decoded.events:
            try:
                await self.store.append_batch([(env, seq)], fence=self.fence, partition=self.partition)
                ok.append((env, seq))
            except StoreError as exc:
                parked.append((seq, self.bus.subjects.for_event(env), env.to_wire(), f"refused by Postgres: {exc}"))
        decoded.parked[:] = parked
        decoded.events[:] = ok
        return await self.store.append_batch(ok, parked, decoded.retried, fence=self.fence, partition=self.partition)

    async def _project(self, events: Sequence[tuple[RunEvent, int]]) -> Projected:
        """Project; when the read models are lost or outdated, rebuild them from the log first."""
        while True:
            try:
                return await self._retry("project", lambda: self.projector.project(events))
            except ReadModelsStale as exc:
                log.warning("coordinator.read_models_stale", reason=str(exc))
                await self.heal(force_rebuild=True)

    async def heal(self, *, force_rebuild: bool = False) -> None:
        """Bring the read models level with the log: rebuild them when their checkpoint is missing or of
        another generation, else apply what the log holds beyond the checkpoint. Runs at start-up and
        whenever a batch finds the models lost; nothing an operator has to do."""
        checkpoint = await self._retry("checkpoint", self.projector.checkpoint)
        if force_rebuild or checkpoint is None or not checkpoint.current:
            started = time.perf_counter()
            while True:
                rebuilder = Rebuilder(self.store, self.projector, self.admission.keys)
                rebuilder.progress_total = await self._retry("count", self.store.max_seq)
                try:
                    report = await self._retry("rebuild", rebuilder.rebuild)
                    break
                except ReadModelsStale as exc:  # Redis lost the rebuild's work before its switch: start over
                    log.warning("coordinator.rebuild_lost", reason=str(exc))
            log.info(
                "coordinator.rebuilt",
                events=report.events,
                runs=report.runs,
                seconds=round(time.perf_counter() - started, 3),
            )
            self.metrics.read_model_rebuilds.inc()
            await self._announce_certifying(rebuilder.states, {})
            return
        # Only this partition's events: positions are in commit order per partition, not across them.
        own = self.partition if self.bus.subjects.partitioning.partitioned else None

        async def read_behind() -> list[tuple[RunEvent, int]]:
            return [(event, seq) async for seq, event in self.store.stream(after_seq=checkpoint.seq, partition=own)]

        behind = await self._retry("catch_up", read_behind)
        for i in range(0, len(behind), CATCH_UP_CHUNK):
            projected = await self._project(behind[i : i + CATCH_UP_CHUNK])
            await self._announce_certifying(projected.runs, {})
        if behind:
            log.info("coordinator.caught_up", events=len(behind), from_seq=checkpoint.seq)

    async def _forget_secrets(self, runs: Mapping[str, RunState]) -> None:
        """Secrets live only as long as their run needs them."""
        refs = [s.secret_ref for s in runs.values() if s.status.terminal and s.secret_ref]
        if refs and self.secrets is not None:
            secrets = self.secrets
            await self._retry("secrets", lambda: secrets.delete(refs))

    async def _announce_certifying(self, runs: Mapping[str, RunState], causes: Mapping[str, str]) -> None:
        """Tell the certifier about runs it has work for (deduplicated per run), pipelined: with `causes`,
        only the runs this batch's events touched; without, every run (after a rebuild or catch-up, when
        earlier announcements may be lost)."""
        candidates = runs.keys() & causes.keys() if causes else runs.keys()
        announcements = [
            make_event(RunCertifying(run_id=run_id, total=state.total), causation_id=causes.get(run_id))
            for run_id, state in ((r, runs[r]) for r in sorted(candidates))
            if state.awaiting_certificate and state.total is not None
        ]
        if announcements:
            await self._retry("publish", lambda: self.bus.publish_many(announcements))

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Retry an effect until it succeeds: the batch stays un-acked meanwhile, so nothing is lost."""
        watch = asyncio.create_task(self._watch_stall(what))
        try:
            return await retry_forever(f"coordinator.{what}", op, _transient)
        finally:
            watch.cancel()

    async def _watch_stall(self, what: str) -> None:
        """Say so while a step hangs (a table lock, a server that does not answer): a stall is never silent."""
        started = time.monotonic()
        while True:
            await asyncio.sleep(STALL_S)
            self.metrics.writer_stalls.labels(what).inc()
            log.warning("coordinator.stalled", step=what, seconds=round(time.monotonic() - started, 1))

    def _set_lag(self, lag: int) -> None:
        self.stats.lag = lag
        self.metrics.coordinator_lag.set(lag)


class _Committed(NamedTuple):
    msgs: list[Msg]
    decoded: _Decoded
    result: AppendResult
    started: float


async def _settle(finishing: asyncio.Task[None] | None) -> bool:
    """Wait for the batch being finished; False when a newer writer fenced its projection."""
    if finishing is None:
        return True
    try:
        await finishing
    except WriterFenced as exc:
        log.warning("coordinator.fenced", error=str(exc))
        return False
    return True


def _transient(exc: BaseException) -> bool:
    """An infrastructure failure worth retrying; a value Postgres refuses, or lost read models, are not."""
    if isinstance(exc, StoreError) and isinstance(exc.__cause__, asyncpg.DataError):
        return False
    if isinstance(exc, ReadModelsStale):
        return False
    return isinstance(
        exc,
        (InfrastructureError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, *TRANSIENT_ERRORS),
    )


def _park_refused(decoded: _Decoded, msgs: Sequence[Msg], refused: Sequence[Refusal], grace_s: float) -> None:
    """Move the events the admission checks refused from the batch's events to its parked rows; one whose
    refusal may pass by itself (its run's request not logged yet: a redelivery can overtake the request
    after a fault) is handed back to the stream instead while it is younger than `grace_s`."""
    if not refused:
        return
    reasons = {r.stream_seq: r.reason for r in refused}
    now = utcnow()
    may_pass = {r.stream_seq for r in refused if r.may_pass_later}
    young = {seq for env, seq in decoded.events if seq in may_pass and (now - env.timestamp).total_seconds() < grace_s}
    for msg in msgs:
        seq = message_sequence(msg)
        if seq in young:
            decoded.deferred.append(seq)
        elif seq in reasons:
            decoded.parked.append((seq, msg.subject, bytes(msg.data), reasons[seq]))
    decoded.events[:] = [(env, seq) for env, seq in decoded.events if seq not in reasons]


def _poison_msgs(msgs: list[Msg], decoded: _Decoded) -> list[tuple[Msg, tuple[int, str, bytes, str]]]:
    if not decoded.parked:
        return []  # the usual case: no reply subject to parse
    by_seq = {p[0]: p for p in decoded.parked}
    return [(m, by_seq[message_sequence(m)]) for m in msgs if message_sequence(m) in by_seq]


async def _nak_all(msgs: list[Msg]) -> None:
    for msg in msgs:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, OSError):
            await msg.nak()


async def _release_prefetched(task: asyncio.Task[list[Msg]] | None) -> None:
    """Hand a fetched-but-unapplied batch back for immediate redelivery (a nak, never an ack)."""
    if task is None:
        return
    try:
        msgs = await task
    except (nats.errors.Error, nats.js.errors.Error, OSError):
        return
    for msg in msgs:
        await msg.nak()


async def _quiet_unsubscribe(sub: BatchPuller | None) -> None:
    if sub is not None:
        await sub.close()
