"""The writer's commit step on the in-memory log: decode a fetched batch, check it against the log (its
runs' requests, the watchdog's fences), park poison with its reason, hand back what may pass later, and
append the rest in one transaction, once per dedup key. Real NATS messages (as a pull fetch returns them),
never delivered; the log is MemoryLog, held to Postgres's contract by tests/integration/test_log_ports.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from nats.aio.msg import Msg

from coordinator.admission import Admission, TrustedKeys
from coordinator.decode import RETRY_HEADER
from coordinator.writer import StateCoordinator
from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.memory import MemoryLog
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope, utcnow
from echelon_platform.domain.events import RunFailed, Subjects, make_event
from echelon_platform.errors import WriterFenced
from echelon_platform.metrics import Metrics
from echelon_platform.ports.log import ParkedEvent
from tests.factories import requested, run_events

SETTINGS = Settings()
SUBJECTS = Subjects(SETTINGS.subject_root, SETTINGS.partitioning)
METRICS = Metrics()


async def no_keys() -> dict[str, bytes]:
    return {}


def writer(log: MemoryLog, *, grace_s: float = 30.0) -> StateCoordinator:
    bus = Bus("nats://unused:4222", stream="S", subjects=SUBJECTS)  # never connected: only its subjects
    return StateCoordinator(
        bus=bus,
        store=log,
        projector=None,  # type: ignore[arg-type]  # committing projects nothing
        metrics=METRICS,
        durable="writer",
        admission=Admission(log, TrustedKeys(no_keys)),
        unknown_run_grace_s=grace_s,
    )


def delivered(seq: int, data: bytes, subject: str, headers: dict[str, str] | None = None) -> Msg:
    return Msg(None, subject=subject, reply=f"$JS.ACK.S.writer.1.{seq}.{seq}.0.0", data=data, headers=headers)


def batch(events: list[Envelope], first: int = 1) -> list[Msg]:
    return [delivered(first + i, e.to_wire(), SUBJECTS.for_event(e)) for i, e in enumerate(events)]


async def test_appends_a_batch_in_stream_order() -> None:
    log = MemoryLog()
    events = run_events("r1")
    committed = await writer(log).commit(batch(events))
    assert committed.result.inserted == len(events)
    assert [e.event_id for e in await log.run_events("r1")] == [e.event_id for e in events]
    assert not committed.decoded.parked and not committed.decoded.deferred


async def test_a_redelivered_batch_is_logged_once() -> None:
    log = MemoryLog()
    events = run_events("r1")
    first = await writer(log).commit(batch(events))
    again = await writer(log).commit(batch(events, first=100))  # a new writer, the same messages again
    assert again.result.inserted == 0
    assert again.result.winners == first.result.winners
    assert await log.count() == len(events)


async def test_poison_is_parked_with_its_reason_and_the_rest_logged() -> None:
    log = MemoryLog()
    good = [requested("r1")]
    wrong_subject = make_event(RunFailed(run_id="r1", reason="x", stage="ingest"))
    msgs = [
        *batch(good),
        delivered(2, b"\x00not json", SUBJECTS.subject("verify.run.requested", "r2")),
        delivered(3, wrong_subject.to_wire(), SUBJECTS.subject("verify.run.ingested", "r1")),
    ]
    committed = await writer(log).commit(msgs)
    assert committed.result.inserted == 1
    parked = await log.parked()
    assert [p.stream_seq for p in parked] == [2, 3]
    assert parked[0].raw == b"\x00not json" and "malformed envelope" in parked[0].reason
    assert parked[1].subject == SUBJECTS.subject("verify.run.ingested", "r1")


async def test_an_event_of_an_unknown_run_is_handed_back_while_young_then_parked() -> None:
    log = MemoryLog()
    young = run_events("r1")[1]  # r1's `run.ingesting`, its request not logged
    committed = await writer(log, grace_s=30).commit(batch([young]))
    assert committed.decoded.deferred == [1]
    assert await log.count() == 0 and await log.parked() == []
    old = young.model_copy(update={"timestamp": utcnow() - timedelta(minutes=5)})
    committed = await writer(log, grace_s=30).commit(batch([old]))
    assert committed.decoded.deferred == []
    [parked] = await log.parked()
    assert "never requested" in parked.reason


async def test_a_stale_watchdog_decision_is_parked() -> None:
    log = MemoryLog()
    events = run_events("r1")
    await writer(log).commit(batch(events))
    stale = make_event(RunFailed(run_id="r1", reason="no progress", stage="watchdog", as_of_seq=1))
    committed = await writer(log).commit(batch([stale], first=50))
    assert committed.result.inserted == 0
    [parked] = await log.parked()
    assert "stale watchdog decision" in parked.reason


async def test_a_re_driven_parked_event_is_marked_retried_in_the_same_append() -> None:
    log = MemoryLog()
    await log.append_batch([], [ParkedEvent(7, SUBJECTS.subject("verify.run.requested", "r1"), b"{}", "bad")])
    [row] = await log.parked()
    request = requested("r1")
    msg = delivered(8, request.to_wire(), SUBJECTS.for_event(request), headers={RETRY_HEADER: str(row.id)})
    await writer(log).commit([msg])
    assert await log.parked() == []
    assert [e.event_id for e in await log.run_events("r1")] == [request.event_id]


class Fenced:
    lease = None

    async def check(self, conn: Any) -> None:
        raise WriterFenced("a newer writer holds the lease")


async def test_a_fenced_writer_appends_nothing() -> None:
    log = MemoryLog()
    w = writer(log)
    w.fence = Fenced()
    with pytest.raises(WriterFenced):
        await w.commit(batch(run_events("r1")))
    assert await log.count() == 0
