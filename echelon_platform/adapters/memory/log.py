"""The event log in memory: the recorder, readers and queries of `ports.log`, as EventStore answers them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson

from echelon_platform.domain.envelope import Envelope, correlation_for, utcnow
from echelon_platform.domain.events import (
    CertificateIssued,
    JudgeCalled,
    ReplayInvoked,
    ReplayRequested,
    RunFailed,
    RunRequested,
)
from echelon_platform.ports.log import (
    AppendResult,
    Fence,
    JudgeTotals,
    LogEvent,
    LogRow,
    ParkedEvent,
    StalledRun,
)

_TERMINAL = (CertificateIssued.TOPIC, RunFailed.TOPIC)


@dataclass(frozen=True, slots=True)
class _Stored:
    seq: int
    envelope: Envelope
    payload: bytes  # as JSON: what is read back is a copy, as from a database
    stream_seq: int
    partition: int
    appended_at: datetime


def _projected(topic: str, payload: dict[str, Any]) -> dict[str, Any]:
    """What projections read of a payload (EventStore's `_PROJECTED_PAYLOAD`)."""
    if topic in (ReplayRequested.TOPIC, ReplayInvoked.TOPIC):
        return {k: v for k, v in payload.items() if k not in ("record", "reply")}
    if topic == JudgeCalled.TOPIC:
        return {k: v for k, v in payload.items() if k != "raw_text"}
    return payload


def _folded(topic: str, payload: dict[str, Any]) -> dict[str, Any]:
    """What the rebuild reads of a payload (EventStore's `_FOLDED_PAYLOAD`)."""
    if topic.startswith("verify.replay."):
        return {"replay_id": payload.get("replay_id")}
    return _projected(topic, payload)


class MemoryLog:
    """EventRecorder, LogReader and LogQueries over lists (`ports.log.EventLog`). One asyncio lock makes an
    append one transaction; `clock` stands in for the database's `now()` (the watchdog's stall measure)."""

    def __init__(self) -> None:
        self._events: list[_Stored] = []
        self._by_key: dict[str, _Stored] = {}
        self._ids: set[str] = set()
        self._parked: list[ParkedEvent] = []
        self._lock = asyncio.Lock()
        self.clock = utcnow

    # ---- EventRecorder ----

    async def append_batch(
        self,
        events: Sequence[tuple[Envelope, int]],
        parked: Sequence[ParkedEvent] = (),
        retried: Sequence[int] = (),
        *,
        fence: Fence | None = None,
        partition: int = 0,
    ) -> AppendResult:
        async with self._lock:
            if fence is not None:
                await fence.check(self)
            now = self.clock()
            inserted = 0
            for envelope, stream_seq in events:
                if envelope.dedup_key in self._by_key or envelope.event_id in self._ids:
                    continue
                stored = _Stored(
                    len(self._events) + 1, envelope, orjson.dumps(envelope.payload), stream_seq, partition, now
                )
                self._events.append(stored)
                self._by_key[envelope.dedup_key] = stored
                self._ids.add(envelope.event_id)
                inserted += 1
            taken = {p.stream_seq for p in self._parked}
            for p in parked:
                if p.stream_seq not in taken:
                    taken.add(p.stream_seq)
                    self._parked.append(replace(p, id=len(self._parked) + 1, parked_at=now, retried_at=None))
            again = set(retried)
            self._parked = [replace(p, retried_at=now) if p.id in again else p for p in self._parked]
            winners = {
                s.envelope.event_id: s.seq for e, _ in events if (s := self._by_key.get(e.dedup_key)) is not None
            }
        return AppendResult(winners=winners, inserted=inserted)

    # ---- LogReader ----

    def _of_run(self, run_id: str) -> list[_Stored]:
        correlation = correlation_for(run_id)
        return [s for s in self._events if s.envelope.correlation_id == correlation]

    @staticmethod
    def _envelope(stored: _Stored) -> Envelope:
        return stored.envelope.model_copy(update={"payload": orjson.loads(stored.payload)})

    async def run_events(self, run_id: str, topics: Sequence[str] | None = None) -> list[Envelope]:
        return [self._envelope(s) for s in self._of_run(run_id) if not topics or s.envelope.topic in topics]

    async def run_events_page(self, run_id: str, *, after: int = 0, limit: int = 100) -> list[tuple[int, Envelope]]:
        return [(s.seq, self._envelope(s)) for s in self._of_run(run_id) if s.seq > after][:limit]

    async def run_log(self, run_id: str, *, timeout: float) -> list[tuple[int, LogEvent]]:
        return [(s.seq, self._log_event(s)) for s in self._of_run(run_id)]

    @staticmethod
    def _log_event(s: _Stored) -> LogEvent:
        e = s.envelope
        return LogEvent(
            e.event_id, e.timestamp, e.topic, e.correlation_id, _projected(e.topic, orjson.loads(s.payload))
        )

    async def stream(
        self, *, after_seq: int = 0, partition: int | None = None, prefetch: int = 5000
    ) -> AsyncIterator[tuple[int, LogEvent]]:
        for s in list(self._events):
            if s.seq > after_seq and (partition is None or s.partition == partition):
                yield s.seq, self._log_event(s)

    async def stream_rows(
        self,
        *,
        after_seq: int = 0,
        positions: Mapping[int, int] | None = None,
        batch: int = 5000,
        payload_topics: Sequence[str] | None = None,
    ) -> AsyncIterator[Sequence[LogRow]]:
        rows: list[LogRow] = []
        for s in list(self._events):  # a consistent cut: what was appended when the read began
            if positions is not None:
                if s.partition not in positions or s.seq <= positions[s.partition]:
                    continue
            elif s.seq <= after_seq:
                continue
            e = s.envelope
            payload: str | None = None
            if payload_topics is None:
                payload = orjson.dumps(_projected(e.topic, orjson.loads(s.payload))).decode()
            elif e.topic in payload_topics:
                payload = orjson.dumps(_folded(e.topic, orjson.loads(s.payload))).decode()
            rows.append((s.seq, e.event_id, e.timestamp, e.topic, e.correlation_id, payload, s.partition))
            if len(rows) == batch:
                yield rows
                rows = []
        if rows:
            yield rows

    async def max_seq(self) -> int:
        return self._events[-1].seq if self._events else 0

    async def count(self) -> int:
        return len(self._events)

    # ---- LogQueries ----

    async def has_dedup_keys(self, keys: Sequence[str]) -> set[str]:
        return {k for k in keys if k in self._by_key}

    async def stalled_runs(self, older_than_s: float) -> list[StalledRun]:
        runs: dict[str, list[_Stored]] = {}
        for s in self._events:
            runs.setdefault(s.envelope.correlation_id, []).append(s)
        now = self.clock()
        stalled = []
        for correlation, events in runs.items():
            topics = {s.envelope.topic for s in events}
            if RunRequested.TOPIC not in topics or topics.intersection(_TERMINAL):
                continue
            last = max(s.appended_at for s in events)
            if (now - last).total_seconds() > older_than_s:
                stalled.append(StalledRun(correlation.removeprefix("run-"), last, max(s.seq for s in events)))
        return stalled

    async def last_positions(self, run_ids: Sequence[str]) -> dict[str, int]:
        return {r: events[-1].seq for r in run_ids if (events := self._of_run(r))}

    async def judge_usage(self, run_ids: Sequence[str]) -> dict[str, JudgeTotals]:
        usage: dict[str, JudgeTotals] = {}
        for run_id in run_ids:
            calls = [orjson.loads(s.payload) for s in self._of_run(run_id) if s.envelope.topic == JudgeCalled.TOPIC]
            if calls:
                by_judge: dict[str, tuple[int, int, float]] = {}
                for c in calls:
                    i, o, cost = by_judge.get(str(c.get("judge") or ""), (0, 0, 0.0))
                    by_judge[str(c.get("judge") or "")] = (
                        i + int(c.get("input_tokens") or 0),
                        o + int(c.get("output_tokens") or 0),
                        cost + float(c.get("cost_usd") or 0),
                    )
                usage[run_id] = JudgeTotals(
                    len(calls),
                    sum(int(c.get("input_tokens") or 0) for c in calls),
                    sum(int(c.get("output_tokens") or 0) for c in calls),
                    sum(float(c.get("cost_usd") or 0) for c in calls),
                    by_judge,
                )
        return usage

    async def parked(self, *, include_retried: bool = False, limit: int = 100) -> list[ParkedEvent]:
        return [p for p in self._parked if include_retried or p.retried_at is None][:limit]

    async def ping(self) -> None:
        return None
