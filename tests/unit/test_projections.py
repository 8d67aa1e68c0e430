"""Projections are pure and order/duplication-insensitive (hypothesis property)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from echelon_platform.domain.events import RunCompleted, RunFailed, make_event
from echelon_platform.domain.projections import RunState, Status, apply, fold, public_view, to_record
from tests.factories import run_events

RUN = "01JTESTRUN0000000000000000"
EVENTS = [
    *run_events(RUN, n=4, failed=1),
    make_event(RunCompleted(run_id=RUN, certificate_id=f"cert-{RUN}")),
    make_event(RunFailed(run_id=RUN, reason="watchdog: no progress", stage="watchdog")),
]
REFERENCE = to_record(fold(RUN, EVENTS))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(EVENTS), min_size=len(EVENTS), max_size=3 * len(EVENTS)).flatmap(st.permutations))
def test_any_permutation_with_duplicates_gives_the_same_read_model(events: list) -> None:  # type: ignore[type-arg]
    if {e.event_id for e in events} != {e.event_id for e in EVENTS}:
        events = events + EVENTS  # every event at least once
    assert to_record(fold(RUN, events)) == REFERENCE


def test_progress_counts_distinct_replays_and_status_moves_forward() -> None:
    events = run_events(RUN, n=3, failed=1)
    state = fold(RUN, events + events)
    assert state.progress == 3
    assert state.total == 3
    assert state.status is Status.CERTIFYING
    partial = fold(RUN, events[:4])
    assert partial.status is Status.SCORING and partial.progress == 1


def test_first_terminal_event_wins_whatever_the_arrival_order() -> None:
    done = make_event(RunCompleted(run_id=RUN, certificate_id="cert-x"))
    failed = make_event(RunFailed(run_id=RUN, reason="late watchdog", stage="watchdog"))
    base = run_events(RUN, n=2, failed=0)
    a = fold(RUN, [*base, done, failed])
    b = fold(RUN, [failed, *base, done])
    assert a == b
    assert a.status is Status.COMPLETED  # `done` has the smaller (earlier) ULID


def test_terminal_state_is_final() -> None:
    failed = make_event(RunFailed(run_id=RUN, reason="x" * 5000, stage="ingest"))
    state = fold(RUN, [*run_events(RUN, n=1, failed=0)[:2], failed])
    later = apply(state, run_events(RUN, n=1, failed=0)[2])
    assert later.status is Status.FAILED
    assert state.error is not None and len(state.error) == 2000


def test_public_view_shape() -> None:
    view = public_view(fold(RUN, run_events(RUN)))
    assert set(view) == {
        "run_id",
        "status",
        "progress",
        "total",
        "construct_id",
        "repo_url",
        "error",
        "certificate_id",
        "created_at",
        "updated_at",
    }
    assert RunState(run_id="x").visible is False
