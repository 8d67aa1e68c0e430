"""An event carrying a field this version does not know (published by a newer process) is parked by the writer
with a reason naming the field, never logged half-understood: the upgrade order in docs/durability.md (the
readers of an event before its publishers, then `echelon parked retry`) rests on this."""

from __future__ import annotations

import json

from nats.aio.msg import Msg

from coordinator.decode import decode_batch
from echelon_platform.config import Settings
from echelon_platform.domain.events import ReplayRequested, Subjects, make_event
from tests.factories import record

SUBJECTS = Subjects(Settings().subject_root, Settings().partitioning)


def delivered(seq: int, data: bytes, subject: str) -> Msg:
    return Msg(None, subject=subject, reply=f"$JS.ACK.S.writer.1.{seq}.{seq}.0.0", data=data)


def test_a_payload_field_from_a_newer_publisher_is_parked_with_its_name() -> None:
    event = make_event(ReplayRequested(run_id="r1", replay_id="r1-0", index=0, record=record(0)))
    wire = json.loads(event.to_wire())
    wire["payload"]["carried_by_a_newer_ingest"] = {"anything": 1}
    newer = json.dumps(wire).encode()

    decoded = decode_batch(
        [delivered(1, event.to_wire(), SUBJECTS.for_event(event)), delivered(2, newer, SUBJECTS.for_event(event))],
        SUBJECTS,
    )

    assert [seq for _, seq in decoded.events] == [1]
    assert [p.stream_seq for p in decoded.parked] == [2]
    assert "carried_by_a_newer_ingest" in decoded.parked[0].reason
