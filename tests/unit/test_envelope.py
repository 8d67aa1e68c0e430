"""The envelope, its wire boundary, topics and subjects."""

from __future__ import annotations

import runpy
from pathlib import Path

import orjson
import pytest

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import TOPICS, RunIngested, Subjects, make_event, parse_payload
from echelon_platform.errors import EnvelopeError
from tests.factories import requested

ROOT = Path(__file__).resolve().parents[2]


def test_wire_round_trip_is_exact_and_camel_cased() -> None:
    event = requested("RUN1")
    raw = event.to_wire()
    assert Envelope.from_wire(raw) == event
    assert set(orjson.loads(raw)) == {
        "eventId",
        "timestamp",
        "topic",
        "correlationId",
        "causationId",
        "payload",
        "version",
        "dedupKey",
    }


def test_ids_sort_by_creation_and_dedup_keys_are_deterministic() -> None:
    a, b = requested("RUN1"), requested("RUN1")
    assert a.event_id < b.event_id and len(a.event_id) == 26
    assert a.dedup_key == b.dedup_key == "verify.run.requested:RUN1"
    assert a.correlation_id == "run-RUN1" and a.run_id == "RUN1"


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"", "<root>"),
        (b"[1, 2]", "<root>"),
        (b'{"eventId": 1}', "eventId"),
        (b"\xff\xfe", "<root>"),
    ],
)
def test_malformed_bytes_raise_one_clear_error(raw: bytes, where: str) -> None:
    with pytest.raises(EnvelopeError, match=f"malformed envelope: {where}"):
        Envelope.from_wire(raw)


def test_strict_envelope_refuses_coercion_and_unknown_fields() -> None:
    data = orjson.loads(requested("RUN1").to_wire())
    with pytest.raises(EnvelopeError, match="version"):
        Envelope.from_wire(orjson.dumps({**data, "version": "1"}))
    with pytest.raises(EnvelopeError, match="extra"):
        Envelope.from_wire(orjson.dumps({**data, "extra": True}))


def test_payloads_are_validated_against_their_topic() -> None:
    event = make_event(RunIngested(run_id="R", total=3, ground_truth_source="github", commit_range="a..b"))
    assert parse_payload(event) == RunIngested(run_id="R", total=3, ground_truth_source="github", commit_range="a..b")
    with pytest.raises(EnvelopeError, match="total"):
        parse_payload(event.model_copy(update={"payload": {**event.payload, "total": -1}}))
    with pytest.raises(EnvelopeError, match="does not match"):
        parse_payload(event.model_copy(update={"payload": {**event.payload, "run_id": "OTHER"}}))
    with pytest.raises(EnvelopeError, match="unknown topic"):
        parse_payload(event.model_copy(update={"topic": "verify.run.exploded"}))


def test_subjects_put_the_run_last_under_any_root() -> None:
    event = requested("RUN1")
    assert Subjects().for_event(event) == "verify.run.requested.RUN1"
    assert Subjects().of_run("RUN1") == "verify.*.*.RUN1"
    assert Subjects("t1").for_event(event) == "t1.run.requested.RUN1"
    assert Subjects("t1").user_pattern("verify.run.*") == "t1.run.*"
    assert all(topic.count(".") == 2 for topic in TOPICS)


def test_events_doc_is_generated_from_the_registry() -> None:
    render = runpy.run_path(str(ROOT / "scripts" / "gen_events_doc.py"))["render"]
    assert (ROOT / "docs" / "events.md").read_text() == render(), "run: python scripts/gen_events_doc.py"
