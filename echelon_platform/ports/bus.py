"""The bus's ports for roles that publish events and look one up: implemented by `adapters.bus.Bus` (NATS
JetStream) and `adapters.memory.MemoryPublisher`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from echelon_platform.domain.envelope import Envelope


class Publisher(Protocol):
    """Publishes events under their dedup key (a second publish of a key is the same stream message)."""

    async def publish(self, envelope: Envelope, *, timeout: float = 5.0) -> int:
        """Publish and wait for the ack; the stream sequence (also for a duplicate)."""
        ...

    async def publish_many(self, envelopes: Sequence[Envelope], *, timeout: float = 10.0) -> list[int]:
        """Publish all at once, then wait for every ack; their stream sequences."""
        ...

    @property
    def max_payload(self) -> int:
        """The largest message the bus carries."""
        ...


class StreamLookup(Protocol):
    """Reads one event straight from the stream (before the writer logged it)."""

    async def first_valid_on_subject(self, subject: str, *, scan: int = 16) -> Envelope | None:
        """The oldest valid event on `subject` (what the writer would park is skipped), or None."""
        ...


class RawPublisher(Protocol):
    """Publishes bytes as they are, under a message id of the caller's (the watchdog's one per decision)."""

    async def publish_raw(
        self, subject: str, data: bytes, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> int: ...


class WriterBacklog(Protocol):
    async def backlog_age_s(self, durable: str) -> float:
        """How long the oldest message `durable` has not acked has been waiting (0 when none)."""
        ...
