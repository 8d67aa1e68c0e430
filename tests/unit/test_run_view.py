"""GET /runs/{id} and POST /runs answer JSON they build themselves: it must be the bytes FastAPI would produce."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from api.runs import _created, run_view_json
from api.schemas import RunCreated, RunView
from echelon_platform.domain.projections import Decision, RunState, Status, public_view

ZONES = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))])
TIMES = st.none() | st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=ZONES)
TEXT = st.none() | st.text(max_size=40)
IDS = st.frozensets(st.text(alphabet="abc0123456789-", min_size=1, max_size=8), max_size=6)
DECISIONS = st.none() | st.builds(Decision, st.integers(min_value=0, max_value=10**9), st.text(max_size=30))
STATES = st.builds(
    RunState,
    run_id=st.text(min_size=1, max_size=30),
    user_id=TEXT,
    construct_id=TEXT,
    repo_url=TEXT,
    created_at=TIMES,
    updated_at=TIMES,
    rank=st.sampled_from(list(Status)),
    total=st.none() | st.integers(min_value=0, max_value=1000),
    done=IDS,
    scored=IDS,
    certificate=DECISIONS,
    failure=DECISIONS,
    completion_announced=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(STATES)
def test_run_view_json_is_what_the_response_model_serialises(state: RunState) -> None:
    assert run_view_json(state) == RunView.model_validate(public_view(state)).model_dump_json().encode()


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=30), st.sampled_from([s.name for s in Status]), TIMES.filter(bool), st.booleans())
def test_post_answer_is_what_the_response_model_serialises(
    run_id: str, status: str, created_at: datetime, repeat: bool
) -> None:
    code = 200 if repeat else 201
    answer = _created(run_id, status, created_at, code)
    assert answer.status_code == code and answer.media_type == "application/json"
    expected = RunCreated(run_id=run_id, status=status, created_at=created_at).model_dump_json().encode()
    assert answer.body == expected
