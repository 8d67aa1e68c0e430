"""The stage-worker loop: a durable pull consumer per stage, bounded concurrency, ack after publish.

A handler turns one event into the events it causes. Effects are publishes with deterministic dedup keys,
so a redelivered message that is handled twice still yields each event once in the log.

Messages are handled one task each: up to `concurrency` in flight, more fetched as slots free up. Slots
are shared fairly, not first come: every user with work here gets an equal share (and never more than
`per_user`), and within it every run of that user with work an equal share (at most `per_run`); a user or
run seen lately keeps one slot free for its next message. A message over its share waits in this process
(kept alive, not redelivered: that would count against its attempts) and starts when its turn comes,
round-robin over users then runs; beyond `max_held` waiting, it is put back for later.
A user alone gets (nearly) every slot; a user whose oracles hang holds only its share, so others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from cachetools import LRUCache

from echelon_platform.adapters.bus import BUS_ERRORS, Bus, Delivery
from echelon_platform.adapters.bus_puller import BatchPuller
from echelon_platform.domain.bus_access import stage_durable
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Payload, parse_payload
from echelon_platform.errors import EnvelopeError, InfrastructureError, NotYetInLog
from echelon_platform.metrics import Metrics
from echelon_platform.retry import Backoff, backoff_delay
from pipeline_workers.owner import current_owner

log = structlog.get_logger(__name__)
# How often an idle stage checks that its durable consumer still exists (a fetch from a deleted one only
# times out, which is also what an empty queue does).
CONSUMER_CHECK_S = 10.0
# A user (or run) counts as active for this long after its last message, so its share is kept for it
# while its next messages are on their way.
ACTIVE_S = 5.0
Owner = Callable[[str], Awaitable[str]]
RETRY_CAP_S = 30.0  # the longest a failed message waits before its next attempt
# A fetch that failed (the consumer gone, NATS away): subscribe again after a pause.
FETCH_ERRORS: tuple[type[BaseException], ...] = (InfrastructureError, *BUS_ERRORS)


class Handler(Protocol):
    stage: str
    topic: str

    async def handle(self, envelope: Envelope, payload: Payload) -> Sequence[Envelope]:
        """Events caused by this one. Raise InfrastructureError for a retryable failure, NotYetInLog to wait."""
        ...

    def give_up(self, envelope: Envelope, payload: Payload, reason: str) -> Sequence[Envelope]:
        """Events that record a permanent failure after the last delivery attempt (dead letter)."""
        ...


@dataclass
class StageStats:
    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    poison: int = 0
    waited: int = 0  # NotYetInLog: put back without counting as a failed attempt
    deferred: int = 0  # the run was at its per-run cap: put back for later


@dataclass(frozen=True)
class _Held:
    msg: Delivery
    envelope: Envelope
    payload: Payload
    user: str
    run_id: str


class StageWorker:
    def __init__(
        self,
        handler: Handler,
        *,
        bus: Bus,
        metrics: Metrics,
        durable_prefix: str,
        concurrency: int = 8,
        per_run: int | None = None,
        per_user: int | None = None,
        owner: Owner | None = None,
        ack_wait_s: float = 60.0,
        max_deliver: int = 5,
        fetch_timeout_s: float = 0.5,
        max_wait_delay_s: float = 10.0,
        drain_s: float = 5.0,
    ) -> None:
        self.handler = handler
        self.bus = bus
        self.metrics = metrics
        self.durable = stage_durable(durable_prefix, handler.stage)
        self.concurrency = concurrency
        self.per_user = max(1, per_user or (concurrency * 3 // 4))
        self.per_run = max(1, per_run or self.per_user)
        self._owner = owner
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.fetch_timeout_s = fetch_timeout_s
        self.max_wait_delay_s = max_wait_delay_s
        self.drain_s = drain_s
        self.stats = StageStats()
        self._stopping = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._per_run: Counter[str] = Counter()
        self._per_user: Counter[str] = Counter()
        self._user_seen: dict[str, float] = {}
        self._run_seen: dict[str, tuple[str, float]] = {}  # run -> (user, last seen)
        # Messages over their share, waiting here for their turn: user -> run -> messages (in order).
        self.max_held = 4 * concurrency
        self._held: dict[str, dict[str, deque[_Held]]] = {}
        self._held_count = 0
        self._held_keeper: asyncio.Task[None] | None = None
        # Deliveries that were put back without a failure (waiting, per-run cap), by stream sequence, so
        # they do not use up a message's attempts. Per process and bounded: losing an entry only makes
        # the count stricter.
        self._put_back: LRUCache[int, int] = LRUCache(100_000)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, *, until_idle: bool = False) -> StageStats:
        try:
            await self._loop(until_idle=until_idle)
        except asyncio.CancelledError:
            # Killed: in-flight messages stay unacked and JetStream redelivers them.
            await self._cancel_in_flight()
            raise
        await self._drain()
        return self.stats

    async def _loop(self, *, until_idle: bool) -> None:
        sub: BatchPuller | None = None
        backoff = Backoff()
        checked = time.monotonic()
        try:
            while not self._stopping.is_set():
                if sub is None:
                    try:
                        # JetStream never stops redelivering (max_deliver -1): this loop counts real
                        # failures itself, so a message that only waits is never dropped.
                        sub = await self.bus.pull_subscription(
                            self.durable,
                            self.bus.subjects.topic_filter(self.handler.topic),
                            ack_wait_s=self.ack_wait_s,
                            max_deliver=-1,
                        )
                    except InfrastructureError as exc:
                        log.warning("stage.subscribe_failed", stage=self.handler.stage, error=str(exc))
                        await backoff.wait(self._stopping)
                        continue
                free = self.concurrency - len(self._in_flight)
                if free <= 0:
                    await asyncio.wait(
                        self._in_flight, timeout=self.fetch_timeout_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                try:
                    msgs = await sub.fetch(free, timeout=self.fetch_timeout_s)
                except FETCH_ERRORS as exc:
                    log.warning("stage.fetch_failed", stage=self.handler.stage, error=str(exc) or type(exc).__name__)
                    await sub.close()
                    sub = None
                    await backoff.wait(self._stopping)
                    continue
                if not msgs:
                    if until_idle and not self._in_flight:
                        break
                    # A fetch from a deleted consumer only times out: look now and then (re-binding
                    # re-creates it on a provisioning bus, and raises SetupMissing on any other).
                    if time.monotonic() - checked > CONSUMER_CHECK_S:
                        checked = time.monotonic()
                        if not await self._consumer_exists():
                            log.warning("stage.consumer_gone", stage=self.handler.stage, durable=self.durable)
                            await sub.close()
                            sub = None
                    continue
                backoff.reset()
                for msg in msgs:
                    await self._dispatch(msg)
        finally:
            if sub is not None:
                await sub.close()

    async def _consumer_exists(self) -> bool:
        try:
            return await self.bus.consumer_exists(self.durable)
        except InfrastructureError:
            return True  # NATS cannot say right now: the fetch errors will tell

    async def _drain(self) -> None:
        """Let in-flight handlers finish for a while; cancel the rest (JetStream redelivers them)."""
        await self._release_held()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=self.drain_s)
        await self._cancel_in_flight()

    async def _cancel_in_flight(self) -> None:
        if self._held_keeper is not None:  # held messages stay unacked: JetStream redelivers them
            self._held_keeper.cancel()
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _dispatch(self, msg: Delivery) -> None:
        if not (msg.reply or "").startswith("$JS.ACK."):
            # An API answer sent to our inbox by someone else's request (see bus_puller.py): not an event.
            log.warning("stage.not_a_delivery", stage=self.handler.stage, subject=msg.subject)
            return
        try:
            envelope = Envelope.from_wire(msg.data)
            payload = parse_payload(envelope)
        except EnvelopeError as exc:
            # The coordinator parks it with the raw bytes; a stage only refuses it.
            log.error("stage.poison", stage=self.handler.stage, subject=msg.subject, reason=str(exc))
            self.stats.poison += 1
            self.metrics.stage_processed.labels(self.handler.stage, "poison").inc()
            await msg.term()
            return
        run_id = envelope.run_id
        carried = getattr(payload, "user_id", None)  # a run's request names its user: no lookup
        user = carried if isinstance(carried, str) else await self._user_of(run_id)
        if self._within_share(user, run_id):
            self._start(_Held(msg, envelope, payload, user, run_id))
            return
        self.stats.deferred += 1
        if self._held_count < self.max_held:
            # Over its share: held here (kept alive) until its turn, not handed back to JetStream, where each
            # redelivery would count against the message's attempts in every other process.
            runs = self._held.setdefault(user, {})
            runs.setdefault(run_id, deque()).append(_Held(msg, envelope, payload, user, run_id))
            self._held_count += 1
            if self._held_keeper is None or self._held_keeper.done():
                self._held_keeper = asyncio.create_task(self._keep_held_alive())
            return
        await self._put_back_later(msg, 0.5 + random.random())  # more than we hold: later

    def _start(self, held: _Held) -> None:
        run_id, user = held.run_id, held.user
        self._per_run[run_id] += 1
        self._per_user[user] += 1
        token = current_owner.set(user)  # the task copies the context: its calls know whose they are
        task = asyncio.create_task(self._one(held.msg, held.envelope, held.payload))
        current_owner.reset(token)
        self._in_flight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._in_flight.discard(t)
            self._per_run[run_id] -= 1
            if self._per_run[run_id] <= 0:
                del self._per_run[run_id]
            self._per_user[user] -= 1
            if self._per_user[user] <= 0:
                del self._per_user[user]
            if not self._stopping.is_set():
                self._start_held()

        task.add_done_callback(done)

    def _start_held(self) -> None:
        """Start held messages whose turn it is: round-robin over users, then over each user's runs."""
        started = True
        while started and self._held_count and len(self._in_flight) < self.concurrency:
            started = False
            for user in list(self._held):
                runs = self._held[user]
                for run_id in list(runs):
                    if len(self._in_flight) >= self.concurrency or not self._within_share(user, run_id):
                        continue
                    queue = runs[run_id]
                    held = queue.popleft()
                    self._held_count -= 1
                    if not queue:
                        del runs[run_id]
                    self._start(held)
                    started = True
                    # Rotate: this run goes behind the user's others, this user behind the other users.
                    if run_id in runs:
                        runs[run_id] = runs.pop(run_id)
                    break
                if not runs:
                    del self._held[user]
                elif started:
                    self._held[user] = self._held.pop(user)

    async def _keep_held_alive(self) -> None:
        while self._held_count:
            await asyncio.sleep(self.ack_wait_s / 3)
            for runs in list(self._held.values()):
                for queue in list(runs.values()):
                    for held in list(queue):
                        with contextlib.suppress(*BUS_ERRORS):
                            await held.msg.in_progress()

    async def _release_held(self) -> None:
        """Stopping: hand held messages back at once, so another worker takes them."""
        held = [h for runs in self._held.values() for queue in runs.values() for h in queue]
        self._held.clear()
        self._held_count = 0
        for h in held:
            await self._put_back_later(h.msg, 0)
        if self._held_keeper is not None:
            self._held_keeper.cancel()

    async def _user_of(self, run_id: str) -> str:
        if self._owner is None:
            return run_id  # no owner known: every run is its own user
        try:
            return await self._owner(run_id)
        except Exception as exc:  # the handler will meet the same problem and report it
            log.info("stage.owner_unknown", stage=self.handler.stage, run_id=run_id, error=str(exc))
            return run_id

    def _within_share(self, user: str, run_id: str) -> bool:
        """Round-robin by shares: users with work here (in flight or held) split the slots equally, then a
        user's runs with work split its share. A user or run seen lately but with nothing here now keeps one
        slot free for its next message (it is likely on its way) instead of a whole share: a run just
        finished does not halve the next one's share. Counting work in flight, a user whose calls hang keeps
        being counted."""
        now = time.monotonic()
        self._user_seen[user] = now
        self._run_seen[run_id] = (user, now)
        if len(self._user_seen) > 64 or len(self._run_seen) > 256:
            self._forget(now)
        busy_users = set(self._per_user) | set(self._held) | {user}
        idle_users = {u for u, seen in self._user_seen.items() if now - seen < ACTIVE_S} - busy_users
        user_share = _share(self.concurrency, len(busy_users), len(idle_users), self.per_user)
        if self._per_user[user] >= user_share:
            return False
        busy_runs = {r for r in self._per_run if self._run_seen.get(r, ("", 0.0))[0] == user}
        busy_runs |= set(self._held.get(user, ())) | {run_id}
        recent = {r for r, (u, seen) in self._run_seen.items() if u == user and now - seen < ACTIVE_S}
        run_share = _share(user_share, len(busy_runs), len(recent - busy_runs), self.per_run)
        return self._per_run[run_id] < run_share

    def _forget(self, now: float) -> None:
        self._user_seen = {u: t for u, t in self._user_seen.items() if now - t < ACTIVE_S or u in self._per_user}
        self._run_seen = {r: v for r, v in self._run_seen.items() if now - v[1] < ACTIVE_S or r in self._per_run}

    async def _put_back_later(self, msg: Delivery, delay: float) -> None:
        seq = int(msg.metadata.sequence.stream)
        self._put_back[seq] = self._put_back.get(seq, 0) + 1
        with contextlib.suppress(*BUS_ERRORS):
            await msg.nak(delay=delay)

    def _attempts(self, msg: Delivery) -> int:
        """Deliveries that ended in a failure (or a crash), not counting the ones that were put back."""
        seq = int(msg.metadata.sequence.stream)
        return max(1, int(msg.metadata.num_delivered) - self._put_back.get(seq, 0))

    async def _one(self, msg: Delivery, envelope: Envelope, payload: Payload) -> None:
        stage = self.handler.stage
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(
            stage=stage,
            topic=envelope.topic,
            correlationId=envelope.correlation_id,
            eventId=envelope.event_id,
        ):
            try:
                async with self._keep_alive(msg):
                    caused = await self.handler.handle(envelope, payload)
                    await self._publish(caused)
            except NotYetInLog as exc:
                await self._wait(msg, exc)
                return
            except Exception as exc:  # anything unexpected is retried, then dead-lettered: runs must end
                await self._failed(msg, envelope, payload, exc)
                return
            await msg.ack()
            self._put_back.pop(int(msg.metadata.sequence.stream), None)
            self.stats.handled += 1
            self.metrics.stage_processed.labels(stage, "ok").inc()
            self.metrics.stage_seconds.labels(stage).observe(time.perf_counter() - started)

    async def _wait(self, msg: Delivery, exc: NotYetInLog) -> None:
        """Not a failure: what the handler needs is still on its way to the log. Never dead-lettered."""
        waits = self._put_back.get(int(msg.metadata.sequence.stream), 0)
        delay = backoff_delay(waits + 1, base=0.25, cap=self.max_wait_delay_s)
        log.info("stage.wait", reason=str(exc), waits=waits + 1, delay_s=delay)
        self.stats.waited += 1
        self.metrics.stage_processed.labels(self.handler.stage, "wait").inc()
        await self._put_back_later(msg, delay)

    async def _failed(self, msg: Delivery, envelope: Envelope, payload: Payload, exc: Exception) -> None:
        stage = self.handler.stage
        reason = str(exc) or type(exc).__name__
        delivered = self._attempts(msg)
        expected = isinstance(exc, InfrastructureError | TimeoutError | OSError)
        if delivered < self.max_deliver:
            log.warning("stage.retry", attempts=delivered, reason=reason, exc_info=not expected)
            self.stats.retried += 1
            self.metrics.stage_processed.labels(stage, "retry").inc()
            await msg.nak(delay=backoff_delay(delivered + 1, base=0.5, cap=RETRY_CAP_S))
            return
        log.error("stage.dead_letter", attempts=delivered, reason=reason, exc_info=not expected)
        try:
            await self._publish(
                self.handler.give_up(envelope, payload, f"gave up after {delivered} attempts: {reason}")
            )
        except Exception as publish_exc:  # the bus is down too: the watchdog will end the run
            log.error("stage.dead_letter_failed", reason=str(publish_exc))
            await msg.nak(delay=RETRY_CAP_S)
            return
        self.stats.dead_lettered += 1
        self.metrics.stage_processed.labels(stage, "dead_letter").inc()
        await msg.ack()
        self._put_back.pop(int(msg.metadata.sequence.stream), None)

    @contextlib.asynccontextmanager
    async def _keep_alive(self, msg: Delivery) -> AsyncIterator[None]:
        """Tell JetStream we are still working so a slow handler (a big ingest) is not redelivered."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.ack_wait_s / 3)
                with contextlib.suppress(*BUS_ERRORS):
                    await msg.in_progress()

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _publish(self, events: Sequence[Envelope]) -> None:
        if not events:
            return
        await self.bus.publish_many(events)
        for event in events:
            self.metrics.events_published.labels(event.topic).inc()


def _share(slots: int, busy: int, idle: int, cap: int) -> int:
    """Each of `busy` sharers' part of `slots`, after one slot is kept for each of `idle` (at least 1)."""
    return min(cap, max(1, (slots - idle) // busy))
