"""The stage-worker loop: a durable pull consumer per stage, bounded concurrency, ack after publish.

A handler turns one event into the events it causes. Effects are publishes with deterministic dedup keys,
so a redelivered message that is handled twice still yields each event once in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg

from echelon_platform.adapters.bus import Bus
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Payload, parse_payload
from echelon_platform.errors import EnvelopeError, InfrastructureError
from echelon_platform.metrics import Metrics
from echelon_platform.retry import Backoff

log = structlog.get_logger(__name__)


class Handler(Protocol):
    stage: str
    topic: str

    async def handle(self, envelope: Envelope, payload: Payload) -> Sequence[Envelope]:
        """Events caused by this one. Raise InfrastructureError for a retryable failure."""
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


class StageWorker:
    def __init__(
        self,
        handler: Handler,
        *,
        bus: Bus,
        metrics: Metrics,
        durable_prefix: str,
        concurrency: int = 8,
        ack_wait_s: float = 60.0,
        max_deliver: int = 5,
        fetch_timeout_s: float = 0.5,
    ) -> None:
        self.handler = handler
        self.bus = bus
        self.metrics = metrics
        self.durable = f"{durable_prefix}-{handler.stage}"
        self.concurrency = concurrency
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.fetch_timeout_s = fetch_timeout_s
        self.stats = StageStats()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, *, until_idle: bool = False) -> StageStats:
        sub: Any = None
        backoff = Backoff()
        while not self._stopping.is_set():
            if sub is None:
                try:
                    sub = await self.bus.pull_subscription(
                        self.durable,
                        self.bus.subjects.topic_filter(self.handler.topic),
                        ack_wait_s=self.ack_wait_s,
                        max_deliver=self.max_deliver,
                        max_ack_pending=self.concurrency * 4,
                    )
                except InfrastructureError as exc:
                    log.warning("stage.subscribe_failed", stage=self.handler.stage, error=str(exc))
                    await backoff.wait(self._stopping)
                    continue
            try:
                msgs = await sub.fetch(self.concurrency, timeout=self.fetch_timeout_s)
            except (nats.errors.TimeoutError, TimeoutError):
                if until_idle:
                    break
                continue
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                log.warning("stage.fetch_failed", stage=self.handler.stage, error=str(exc) or type(exc).__name__)
                sub = None
                await backoff.wait(self._stopping)
                continue
            backoff.reset()
            await asyncio.gather(*(self._one(m) for m in msgs))
        if sub is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()
        return self.stats

    async def _one(self, msg: Msg) -> None:
        stage = self.handler.stage
        started = time.perf_counter()
        try:
            envelope = Envelope.from_wire(msg.data)
            payload = parse_payload(envelope)
        except EnvelopeError as exc:
            # The coordinator parks it with the raw bytes; a stage only refuses it.
            log.error("stage.poison", stage=stage, subject=msg.subject, reason=str(exc))
            self.stats.poison += 1
            self.metrics.stage_processed.labels(stage, "poison").inc()
            await msg.term()
            return
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
            except Exception as exc:  # anything unexpected is retried, then dead-lettered: runs must end
                await self._failed(msg, envelope, payload, exc)
                return
            await msg.ack()
            self.stats.handled += 1
            self.metrics.stage_processed.labels(stage, "ok").inc()
            self.metrics.stage_seconds.labels(stage).observe(time.perf_counter() - started)

    async def _failed(self, msg: Msg, envelope: Envelope, payload: Payload, exc: Exception) -> None:
        stage = self.handler.stage
        reason = str(exc) or type(exc).__name__
        delivered = int(msg.metadata.num_delivered)
        expected = isinstance(exc, InfrastructureError | TimeoutError | OSError)
        if delivered < self.max_deliver:
            log.warning("stage.retry", attempts=delivered, reason=reason, exc_info=not expected)
            self.stats.retried += 1
            self.metrics.stage_processed.labels(stage, "retry").inc()
            await msg.nak(delay=min(30.0, 0.5 * 2**delivered))
            return
        log.error("stage.dead_letter", attempts=delivered, reason=reason, exc_info=not expected)
        try:
            await self._publish(
                self.handler.give_up(envelope, payload, f"gave up after {delivered} attempts: {reason}")
            )
        except Exception as publish_exc:  # the bus is down too: the watchdog will end the run
            log.error("stage.dead_letter_failed", reason=str(publish_exc))
            await msg.nak(delay=30.0)
            return
        self.stats.dead_lettered += 1
        self.metrics.stage_processed.labels(stage, "dead_letter").inc()
        await msg.ack()

    @contextlib.asynccontextmanager
    async def _keep_alive(self, msg: Msg) -> AsyncIterator[None]:
        """Tell JetStream we are still working so a slow handler (a big ingest) is not redelivered."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.ack_wait_s / 3)
                with contextlib.suppress(nats.errors.Error, OSError):
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
