"""How the API puts an event on the bus: make it, publish it (acked), count it, log it."""

from __future__ import annotations

import structlog

from api.access_log import note_on_access_line
from echelon_platform.adapters.bus import Bus, PublishAck
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Payload, make_event
from echelon_platform.metrics import Metrics

log = structlog.get_logger(__name__)


async def publish(bus: Bus, metrics: Metrics, payload: Payload) -> PublishAck:
    """Publish one event the API makes; a duplicate (the same dedup key, already stored) is not counted."""
    return await publish_event(bus, metrics, make_event(payload))


async def publish_event(bus: Bus, metrics: Metrics, event: Envelope) -> PublishAck:
    """`publish` of an event already made."""
    ack = await bus.publish_acked(event)
    if not ack.duplicate:
        metrics.events_published.labels(event.topic).inc()
    fields = {
        "topic": event.topic,
        "correlationId": event.correlation_id,
        "eventId": event.event_id,
        "seq": ack.seq,
        "duplicate": ack.duplicate,
    }
    # Within a request, its access line carries these (one line per request, not two: each costs ~20 µs of a
    # POST's ~300); a second event of the same request, or one outside any, gets a line of its own.
    if not note_on_access_line(fields):
        log.info("api.published", **fields)
    return ack


class Publisher:
    """`publish` bound to the process's bus and metrics: what a route that emits events is given."""

    def __init__(self, bus: Bus, metrics: Metrics) -> None:
        self._bus = bus
        self._metrics = metrics

    async def __call__(self, payload: Payload) -> PublishAck:
        return await publish(self._bus, self._metrics, payload)
