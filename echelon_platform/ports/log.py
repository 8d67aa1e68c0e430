"""The event log's ports: the writer's recorder, the readers, and the queries over the log, with the values
they carry. Implemented by `adapters.event_store.EventStore` (Postgres) and `adapters.memory.MemoryLog`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from echelon_platform.domain.envelope import Envelope, run_id_of, utcnow

# One stored event as the rebuild reads it, raw for speed: (seq, event_id, time, topic, correlation_id,
# payload as JSON text or None, partition).
LogRow = tuple[int, str, datetime, str, str, str | None, int]


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A stored event as projections read it: only what they use (cheaper than an Envelope)."""

    event_id: str
    timestamp: datetime
    topic: str
    correlation_id: str
    payload: dict[str, Any]

    @property
    def run_id(self) -> str:
        return run_id_of(self.correlation_id)


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    """A message the writer refused (poison): kept with its raw bytes and the reason, never applied.
    `id` and `parked_at` are the log's once it is stored; `retried_at` when an operator re-drove it."""

    stream_seq: int
    subject: str
    raw: bytes
    reason: str
    id: int = 0
    parked_at: datetime = field(default_factory=utcnow)
    retried_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StalledRun:
    run_id: str
    last_appended: datetime
    last_seq: int  # the log position of the run's last event: the watchdog's decision is fenced on it


@dataclass(frozen=True, slots=True)
class JudgeTotals:
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    # The same per judge id (input tokens, output tokens, cost), for the leaderboard's per-judge rows.
    by_judge: dict[str, tuple[int, int, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AppendResult:
    winners: dict[str, int]  # event id → log position, for the batch's dedup keys (new or already there)
    inserted: int


class Fence(Protocol):
    """Checked first in every append transaction, on its connection: raises WriterFenced when this writer
    may no longer append (the connection is the recorder's own; an in-memory recorder passes itself)."""

    async def check(self, conn: Any) -> None: ...

    @property
    def lease(self) -> tuple[str, int] | None:
        """The lease row's partition and the epoch it must hold, when the check is exactly that: the
        recorder may then check it inside its append statement instead of calling `check` first."""
        ...


class EventRecorder(Protocol):
    """The writer's port: the only way events enter the log."""

    async def append_batch(
        self,
        events: Sequence[tuple[Envelope, int]],
        parked: Sequence[ParkedEvent] = (),
        retried: Sequence[int] = (),
        *,
        fence: Fence | None = None,
        partition: int = 0,
    ) -> AppendResult:
        """In one transaction: append events (with their stream sequences) to `partition`, ignoring a dedup
        key already stored; park poison; mark re-driven parked rows. `fence` is checked first."""
        ...


class LogReader(Protocol):
    """Reads of the log: one run's events, pages of them, and the whole log in writer order."""

    async def run_events(self, run_id: str, topics: Sequence[str] | None = None) -> list[Envelope]:
        """A run's events (of `topics`, when given) in log order."""
        ...

    async def run_events_page(self, run_id: str, *, after: int = 0, limit: int = 100) -> list[tuple[int, Envelope]]:
        """A run's events after log position `after`, at most `limit`, with their positions."""
        ...

    async def run_log(self, run_id: str, *, timeout: float) -> list[tuple[int, LogEvent]]:
        """A run's events as projections read them (without replay records, oracle replies, judge texts);
        StoreUnavailable when the log does not answer within `timeout`."""
        ...

    def stream(
        self, *, after_seq: int = 0, partition: int | None = None, prefetch: int = 5000
    ) -> AsyncIterator[tuple[int, LogEvent]]:
        """Every event (of one partition, or all) after `after_seq`, in writer order."""
        ...

    def stream_rows(
        self,
        *,
        after_seq: int = 0,
        positions: Mapping[int, int] | None = None,
        batch: int = 5000,
        payload_topics: Sequence[str] | None = None,
    ) -> AsyncIterator[Sequence[LogRow]]:
        """Every event in writer order as raw rows, `batch` at a time; `positions` (partition → last position
        read) reads only those partitions, each after its own position; with `payload_topics`, the other
        topics' payloads are None and replays' payloads hold only their `replay_id`."""
        ...

    async def max_seq(self) -> int: ...

    async def count(self) -> int: ...


class LogQueries(Protocol):
    """Questions answered from the whole log: the watchdog's, the stages' paid-work guard, stats, operators."""

    async def has_dedup_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these dedup keys are already stored."""
        ...

    async def stalled_runs(self, older_than_s: float) -> list[StalledRun]:
        """Runs still going whose last event was appended more than `older_than_s` ago."""
        ...

    async def last_positions(self, run_ids: Sequence[str]) -> dict[str, int]:
        """Per run: the log position of its last event (runs without events are absent)."""
        ...

    async def judge_usage(self, run_ids: Sequence[str]) -> dict[str, JudgeTotals]:
        """Per run: judge calls logged, their tokens and cost (runs without calls are absent)."""
        ...

    async def parked(self, *, include_retried: bool = False, limit: int = 100) -> list[ParkedEvent]: ...

    async def ping(self) -> None: ...


class RecordingLog(EventRecorder, LogReader, Protocol):
    """What the writer holds: it appends, and reads the log back to bring lost read models level."""


class EventLog(EventRecorder, LogReader, LogQueries, Protocol):
    """All three: what the log's implementations provide (composition roots and tests hold it)."""
