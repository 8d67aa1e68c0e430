"""The single-writer StateCoordinator: fetch a batch → decode → append (one tx) → project (one pipeline) → ack.

The certify trigger (`certify_trigger.py`) and the healing of lost read models (`healing.py`) are its
collaborators; decoding a batch is `decode.py`, the retried steps `retrying.py`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import structlog

from coordinator.admission import Admission
from coordinator.certify_trigger import CertifyTrigger, trigger_causes
from coordinator.decode import Decoded, decode_batch, park_refused, poison_msgs
from coordinator.healing import Healing
from coordinator.retrying import Retrying
from echelon_platform.adapters.bus import BUS_ERRORS, Bus, Delivery, message_pending, message_sequence
from echelon_platform.adapters.bus_puller import BatchPuller
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.writer_lease import WriterLease
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.projections import RunState
from echelon_platform.errors import BusError, InfrastructureError, StoreRefused, WriterFenced
from echelon_platform.metrics import Metrics
from echelon_platform.ports.log import AppendResult, Fence, ParkedEvent, RecordingLog
from echelon_platform.ports.run_secrets import SecretKeeper
from echelon_platform.retry import Backoff

log = structlog.get_logger(__name__)

IDLE_CHECK_S = 1.0
DEFERRED_RETRY_S = 1.0  # an event handed back (its run's request not logged yet) comes again after this
# A fetch that failed on the bus or the consumer: re-create the pull subscription after a pause.
_FETCH_FAILURES: tuple[type[BaseException], ...] = (*BUS_ERRORS, BusError)


@dataclass
class CoordinatorStats:
    batches: int = 0
    received: int = 0
    appended: int = 0
    duplicates: int = 0
    projected: int = 0
    parked: int = 0
    lag: int = 0


class StateCoordinator:
    """Applies every event, in stream order, exactly once in effect. The only writer of domain state."""

    def __init__(
        self,
        *,
        bus: Bus,
        store: RecordingLog,
        projector: Projector,
        metrics: Metrics,
        durable: str,
        batch_size: int = 256,
        fetch_timeout_s: float = 0.5,
        ack_wait_s: float = 60.0,
        secrets: SecretKeeper | None = None,
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
        self._retry = Retrying(metrics)
        self.trigger = CertifyTrigger(bus, self._retry)
        # Only this partition's events on a catch-up: positions are in commit order per partition.
        own = partition if bus.subjects.partitioning.partitioned else None
        self.healing = Healing(
            store=store,
            projector=projector,
            keys=admission.keys,
            metrics=metrics,
            retrying=self._retry,
            trigger=self.trigger,
            own_partition=own,
        )
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
        prefetched: asyncio.Task[list[Delivery]] | None = None
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
                    sub = await self.bus.batch_puller(self.durable).start()
                    backoff.reset()
                except InfrastructureError as exc:
                    log.warning("coordinator.subscribe_failed", error=str(exc))
                    await backoff.wait(self._stopping)
                    continue
            fetch = prefetched or asyncio.ensure_future(sub.fetch(self.batch_size, timeout=self.fetch_timeout_s))
            prefetched = None
            try:
                msgs = await fetch
            except _FETCH_FAILURES as exc:
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
                committed = await self.commit(msgs)
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

    async def commit(self, msgs: list[Delivery]) -> Committed:
        """Decode a batch, check it against the log and the signing keys, and append it (one transaction)."""
        started = time.perf_counter()
        decoded = decode_batch(msgs, self.bus.subjects)
        refused = await self._retry("check", lambda: self.admission.check(decoded.events))
        park_refused(decoded, msgs, refused, self.unknown_run_grace_s)
        result = await self._retry("append", lambda: self._append(decoded))
        self.admission.logged(decoded.events)
        return Committed(msgs, decoded, result, started)

    async def _finish(self, committed: Committed) -> None:
        """Project an appended batch, announce certify work, then ack it. WriterFenced: a newer writer took
        over before the projection; nothing is acked (the messages come back to it)."""
        try:
            await self._project_and_ack(committed)
        except WriterFenced:
            await _nak_all(committed.msgs)
            raise

    async def _project_and_ack(self, committed: Committed) -> None:
        msgs, decoded, result, started = committed
        winners = [(env, result.winners[env.event_id]) for env, _ in decoded.events if env.event_id in result.winners]
        if winners:
            projected = await self.healing.project(winners)
            await self.trigger.announce(projected.runs, trigger_causes(winners))
            await self._forget_secrets(projected.runs)
        # Ack only now: the events are committed in Postgres and visible in Redis.
        for msg, parked in poison_msgs(msgs, decoded):
            log.error("coordinator.parked", stream_seq=parked.stream_seq, subject=parked.subject, reason=parked.reason)
            await msg.term()
        accepted = msgs
        if decoded.parked or decoded.deferred:
            held = {p.stream_seq for p in decoded.parked} | set(decoded.deferred)
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

    async def _append(self, decoded: Decoded) -> AppendResult:
        try:
            return await self.store.append_batch(
                decoded.events, decoded.parked, decoded.retried, fence=self.fence, partition=self.partition
            )
        except StoreRefused:
            pass
        # A value Postgres refuses (e.g. a NUL character in JSON): find and park the culprits one by one.
        ok: list[tuple[Envelope, int]] = []
        parked = list(decoded.parked)
        for env, seq in decoded.events:
            try:
                await self.store.append_batch([(env, seq)], fence=self.fence, partition=self.partition)
                ok.append((env, seq))
            except StoreRefused as exc:
                parked.append(
                    ParkedEvent(seq, self.bus.subjects.for_event(env), env.to_wire(), f"refused by Postgres: {exc}")
                )
        decoded.parked[:] = parked
        decoded.events[:] = ok
        return await self.store.append_batch(ok, parked, decoded.retried, fence=self.fence, partition=self.partition)

    async def heal(self, *, force_rebuild: bool = False) -> None:
        """Bring the read models level with the log (see `Healing.heal`)."""
        await self.healing.heal(force_rebuild=force_rebuild)

    async def _forget_secrets(self, runs: Mapping[str, RunState]) -> None:
        """Secrets live only as long as their run needs them."""
        refs = [s.secret_ref for s in runs.values() if s.status.terminal and s.secret_ref]
        if refs and self.secrets is not None:
            secrets = self.secrets
            await self._retry("secrets", lambda: secrets.delete(refs))

    def _set_lag(self, lag: int) -> None:
        self.stats.lag = lag
        self.metrics.coordinator_lag.set(lag)


class Committed(NamedTuple):
    """A batch appended (its events, parked poison and re-driven rows in one transaction), not yet acked."""

    msgs: list[Delivery]
    decoded: Decoded
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


async def _nak_all(msgs: list[Delivery]) -> None:
    for msg in msgs:
        with contextlib.suppress(*BUS_ERRORS):
            await msg.nak()


async def _release_prefetched(task: asyncio.Task[list[Delivery]] | None) -> None:
    """Hand a fetched-but-unapplied batch back for immediate redelivery (a nak, never an ack)."""
    if task is None:
        return
    try:
        msgs = await task
    except BUS_ERRORS:
        return
    for msg in msgs:
        await msg.nak()


async def _quiet_unsubscribe(sub: BatchPuller | None) -> None:
    if sub is not None:
        await sub.close()
