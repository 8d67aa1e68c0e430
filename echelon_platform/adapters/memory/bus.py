"""The bus in memory: a Publisher, RawPublisher and StreamLookup (`ports.bus`) over a list, deduplicating as
JetStream does within its duplicate window (by the message id), so tests can read back what a role published;
and the writers' backlog (`ports.bus.WriterBacklog`) as a test sets it."""

from __future__ import annotations

from collections.abc import Sequence

from echelon_platform.domain.admission import check_event
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Subjects, parse_payload
from echelon_platform.errors import EnvelopeError

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # NATS's default


class MemoryBacklog:
    """`ports.bus.WriterBacklog`: how long each consumer's oldest unacked message has waited, as set."""

    def __init__(self) -> None:
        self.ages: dict[str, float] = {}

    async def backlog_age_s(self, durable: str) -> float:
        return self.ages.get(durable, 0.0)


class MemoryPublisher:
    def __init__(self, subjects: Subjects, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.subjects = subjects
        self._max_payload = max_payload
        self.messages: list[tuple[str, bytes]] = []  # (subject, data), stream sequence = index + 1
        self._seqs: dict[str, int] = {}  # dedup key → stream sequence

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def published(self) -> list[Envelope]:
        """Every message stored, as events, in stream order."""
        return [Envelope.from_wire(data) for _, data in self.messages]

    async def publish(self, envelope: Envelope, *, timeout: float = 5.0) -> int:
        seq = self._seqs.get(envelope.dedup_key)
        if seq is None:
            self.messages.append((self.subjects.for_event(envelope), envelope.to_wire()))
            seq = self._seqs[envelope.dedup_key] = len(self.messages)
        return seq

    async def publish_raw(
        self, subject: str, data: bytes, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> int:
        seq = self._seqs.get(msg_id) if msg_id else None
        if seq is None:
            self.messages.append((subject, data))
            seq = len(self.messages)
            if msg_id:
                self._seqs[msg_id] = seq
        return seq

    async def publish_many(self, envelopes: Sequence[Envelope], *, timeout: float = 10.0) -> list[int]:
        return [await self.publish(e) for e in envelopes]

    async def first_valid_on_subject(self, subject: str, *, scan: int = 16) -> Envelope | None:
        for on, data in [m for m in self.messages if m[0] == subject][:scan]:
            try:
                envelope = Envelope.from_wire(data)
                check_event(on, len(data), envelope, parse_payload(envelope), self.subjects)
            except EnvelopeError:
                continue
            return envelope
        return None
