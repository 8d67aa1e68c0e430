"""The rebuild's fast fold (`RunFold`) must be `projections.apply` exactly: any events, any order, duplicates,
any log positions and timestamps, folded as a rebuild reads them (payload JSON text, NULL where not read)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.rebuild_fold import PAYLOAD_TOPICS, PLAIN, RunFold
from echelon_platform.domain.envelope import Envelope, correlation_for, new_event_id
from echelon_platform.domain.events import TOPICS, CertificateIssued, RunCompleted, RunFailed, make_event
from echelon_platform.domain.projections import MAX_ERROR_CHARS, fold
from tests.factories import certificate, requested, run_events

RUN = "01JTESTRUN0000000000000000"


def plain(topic: str) -> Envelope:
    """An event of a topic `apply` has no payload rule for (its payload is never read)."""
    return make_event(RunCompleted(run_id=RUN, certificate_id="x")).model_copy(
        update={"topic": topic, "event_id": new_event_id(), "correlation_id": correlation_for(RUN)}
    )


POOL: list[Envelope] = [
    *run_events(RUN, n=3, failed=1),
    requested(RUN, user="bob", construct="oracle-b"),
    make_event(CertificateIssued(run_id=RUN, certificate=certificate(RUN))),
    make_event(RunCompleted(run_id=RUN, certificate_id=certificate(RUN).certificate_id)),
    make_event(RunFailed(run_id=RUN, reason="watchdog: no progress", stage="watchdog")),
    make_event(RunFailed(run_id=RUN, reason="x" * (MAX_ERROR_CHARS + 10), stage="invoke")),
    *(plain(topic) for topic in sorted(PLAIN)),
]
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def as_read(event: Envelope) -> dict[str, Any] | None:
    """The payload as a rebuild gets it from the store: JSON text for PAYLOAD_TOPICS, else NULL."""
    return orjson.loads(orjson.dumps(event.payload)) if event.topic in PAYLOAD_TOPICS else None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(POOL), st.integers(min_value=1, max_value=10_000), st.integers(min_value=0, max_value=50)
        ),
        max_size=40,
    )
)
def test_run_fold_is_apply(picks: list[tuple[Envelope, int, int]]) -> None:
    pairs = [(e.model_copy(update={"timestamp": BASE + timedelta(seconds=s)}), seq) for e, seq, s in picks]
    run = RunFold(RUN)
    for event, seq in pairs:
        run.add(event.topic, event.timestamp, as_read(event), seq)
    assert run.state() == fold(RUN, pairs)


def test_every_topic_is_either_read_or_plain() -> None:
    assert set(PAYLOAD_TOPICS) | PLAIN | {"verify.run.completed"} == set(TOPICS)
    assert {e.topic for e in POOL} == set(TOPICS)
