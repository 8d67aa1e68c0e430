"""Projections are pure and order/duplication-insensitive (hypothesis property); the lifecycle decides a
run's end in log order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import CertificateIssued, RunCompleted, RunFailed, make_event
from echelon_platform.domain.projections import (
    RunState,
    Status,
    apply,
    fold,
    from_record,
    public_certificate,
    public_view,
    to_record,
)
from tests.factories import certificate, run_events

RUN = "01JTESTRUN0000000000000000"


def logged(events: list[Envelope]) -> list[tuple[Envelope, int]]:
    """Events with the log positions the writer gives them, in this order."""
    return [(e, seq) for seq, e in enumerate(events, start=1)]


def ended(first: Envelope, second: Envelope) -> list[tuple[Envelope, int]]:
    return logged([*run_events(RUN, n=2, failed=0), first, second])


CERT = make_event(CertificateIssued(run_id=RUN, certificate=certificate(RUN)))
DONE = make_event(RunCompleted(run_id=RUN, certificate_id=certificate(RUN).certificate_id))
WATCHDOG = make_event(RunFailed(run_id=RUN, reason="watchdog: no progress", stage="watchdog"))
LOG = logged([*run_events(RUN, n=4, failed=1), CERT, DONE, WATCHDOG])
REFERENCE = to_record(fold(RUN, LOG))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(LOG), min_size=len(LOG), max_size=3 * len(LOG)).flatmap(st.permutations))
def test_any_permutation_with_duplicates_gives_the_same_read_model(pairs: list) -> None:  # type: ignore[type-arg]
    if {e.event_id for e, _ in pairs} != {e.event_id for e, _ in LOG}:
        pairs = pairs + LOG  # every event at least once
    assert to_record(fold(RUN, pairs)) == REFERENCE


def test_record_round_trip() -> None:
    state = fold(RUN, LOG)
    assert from_record(to_record(state)) == state


def test_progress_counts_distinct_replays_and_status_moves_forward() -> None:
    events = run_events(RUN, n=3, failed=1)
    state = fold(RUN, logged(events + events))
    assert state.progress == 3
    assert state.total == 3
    assert state.status is Status.CERTIFYING and state.awaiting_certificate
    partial = fold(RUN, logged(events[:4]))
    assert partial.status is Status.SCORING and partial.progress == 1


def test_a_failure_logged_first_wins_and_a_later_certificate_is_never_public() -> None:
    """The watchdog's `run.failed` then a certificate and `run.completed`: FAILED, no certificate."""
    state = fold(RUN, [*ended(WATCHDOG, CERT), (DONE, 99)])
    assert state.status is Status.FAILED
    assert state.certificate_id is None and state.error == "watchdog: no progress"
    assert not public_certificate(state, CERT.payload["certificate"])
    assert not state.awaiting_certificate


def test_a_certificate_logged_first_wins_over_a_later_failure() -> None:
    state = fold(RUN, [*ended(CERT, WATCHDOG), (DONE, 99)])
    assert state.status is Status.COMPLETED
    assert state.certificate_id == certificate(RUN).certificate_id and state.error is None
    assert public_certificate(state, CERT.payload["certificate"])


def test_the_decision_follows_log_positions_not_event_ids() -> None:
    """Terminal precedence used to be the smallest ULID: the clocks of different processes."""
    late_clock_failure = make_event(RunFailed(run_id=RUN, reason="x", stage="watchdog"))
    # The failure was created after the certificate (a larger ULID) but the writer logged it first.
    assert late_clock_failure.event_id > CERT.event_id
    state = fold(RUN, [*logged(run_events(RUN, n=2, failed=0)), (late_clock_failure, 50), (CERT, 60)])
    assert state.status is Status.FAILED


def test_a_certificate_without_its_completion_still_needs_the_certifier() -> None:
    """A partial publish (certificate stored, `run.completed` lost) must be finished, not forgotten."""
    state = fold(RUN, [*logged(run_events(RUN, n=2, failed=0)), (CERT, 50)])
    assert state.status is Status.CERTIFYING and state.awaiting_certificate
    assert apply(state, DONE, 51).status is Status.COMPLETED


def test_terminal_state_is_final() -> None:
    failed = make_event(RunFailed(run_id=RUN, reason="x" * 5000, stage="ingest"))
    state = fold(RUN, [*logged(run_events(RUN, n=1, failed=0)[:2]), (failed, 10)])
    later = apply(state, run_events(RUN, n=1, failed=0)[2], 11)
    assert later.status is Status.FAILED
    assert state.error is not None and len(state.error) == 2000


def test_public_view_shape() -> None:
    view = public_view(fold(RUN, logged(run_events(RUN))))
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


def test_methodology_registrations_are_not_a_run() -> None:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from echelon_platform.domain.projections import RunState, apply

    event = SimpleNamespace(
        event_id="01J0000000000000000000000A",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        topic="verify.methodology.registered",
        payload={"run_id": "methodology", "version": "v1"},
    )
    state = apply(RunState(run_id="methodology"), event, 1)
    # No update time: the run would otherwise count as active and the watchdog would fail it.
    assert state == RunState(run_id="methodology") and not state.visible
