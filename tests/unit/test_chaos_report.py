"""The pure parts of `echelon chaos`: fault schedule, percentiles, and tracing logged runs to requests."""

from __future__ import annotations

import random

from echelon.chaos.checks import Findings, LoggedRun, check_requests
from echelon.chaos.faults import KINDS
from echelon.chaos.load import Request
from echelon.chaos.report import percentile
from echelon.chaos.runner import schedule
from echelon.commands import parse_range


def test_a_short_schedule_covers_every_kind_before_repeating() -> None:
    plan = schedule(KINDS, 10, random.Random(3))
    assert sorted(k for (k,) in plan[: len(KINDS)]) == sorted(KINDS) and len(plan) == 10


def test_overlapping_rounds_hold_distinct_kinds() -> None:
    plan = schedule(KINDS, 30, random.Random(5), overlap=3)
    assert all(len(r) == 3 and len(set(r)) == 3 for r in plan)
    assert sorted(r[0] for r in plan[: len(KINDS)]) == sorted(KINDS)
    # More overlap than kinds: every kind at once, never a kind twice in a round.
    assert all(sorted(r) == sorted(KINDS) for r in schedule(KINDS, 3, random.Random(1), overlap=50))


def test_the_timed_fault_range_is_parsed_or_refused() -> None:
    assert parse_range("5") == (5.0, 5.0) and parse_range("0.3-15") == (0.3, 15.0)
    assert all(parse_range(t) is None for t in ("", "x", "15-0.3", "0-1", "-1", "1-inf"))


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile([2.0], 99)) == (50.0, 99.0, 2.0)
    assert percentile([], 50) is None


def _run(run_id: str, construct_id: str) -> LoggedRun:
    return LoggedRun(run_id=run_id, construct_id=construct_id, ended_by="verify.certificate.issued")


def test_runs_are_traced_to_the_requests_that_caused_them() -> None:
    accepted = Request(0, "chaos-0", None, ["201"], run_id="r0", status=201)
    refused = Request(1, "chaos-1", None, ["503"])  # a 5xx: must not have started a run
    lost = Request(2, "chaos-2", None, ["ReadError"])  # the answer was lost: a run may exist
    missing = Request(3, "chaos-3", "k", ["503", "200"], run_id="r3", status=200)
    runs = {r.run_id: r for r in (_run("r0", "chaos-0"), _run("r1", "chaos-1"), _run("r2", "chaos-2"))}

    findings = Findings()
    check_requests(findings, [accepted, refused, lost, missing], runs)

    assert set(findings.violations) == {"run_started_by_an_error_answer", "accepted_run_not_logged_once"}
    assert findings.violations["run_started_by_an_error_answer"][0]["construct_id"] == "chaos-1"
    assert findings.violations["accepted_run_not_logged_once"][0]["run_id"] == "r3"
    assert findings.facts["runs_from_lost_answers"] == 1
