from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from echelon_platform.errors import ScoringError
from pipeline_workers.scoring.parsing import (
    MAX_CLAIMS,
    RUBRIC,
    extract_json_object,
    parse_judge_output,
    parse_question,
    snap_to_rubric,
    tally_changes,
    tally_claims,
)

VERDICT: dict[str, Any] = {
    "claims": [
        {"claim": "Adds truncate()", "supported": True},
        {"claim": "Adds caching", "supported": False},
        {"claim": "Exports word_count", "supported": True},
    ],
    "changes": [
        {"change": "new truncate function", "surfaced": True},
        {"change": "__init__ exports truncate and word_count", "surfaced": False},
    ],
    "score": 0.75,
}


def test_plain_json() -> None:
    verdict = parse_judge_output(json.dumps(VERDICT), expected_claims=3)
    assert (verdict.claims.hits, verdict.claims.total, verdict.claims.value) == (2, 3, 2 / 3)
    assert (verdict.changes.hits, verdict.changes.total, verdict.changes.value) == (1, 2, 0.5)
    assert verdict.reply_accuracy == 0.75


@pytest.mark.parametrize(
    "wrapped",
    [
        "```json\n{body}\n```",
        "```\n{body}\n```",
        "```JSON {body}```",
        "Here is my assessment:\n\n```json\n{body}\n```\nLet me know if you need more.",
        "Sure. {body} That is all.",
    ],
)
def test_fenced_or_embedded_json(wrapped: str) -> None:
    text = wrapped.replace("{body}", json.dumps(VERDICT, indent=2))
    assert parse_judge_output(text, expected_claims=3).claims.hits == 2


def test_first_brace_that_is_not_json_is_skipped() -> None:
    text = 'The set {a, b} is irrelevant. {"question": "What does truncate return?"}'
    assert parse_question(text) == "What does truncate return?"


@pytest.mark.parametrize(
    "text",
    ["", "I cannot grade this.", '{"claims": [', "[1, 2, 3]", "```json\n{not json}\n```"],
)
def test_no_json_object_is_a_scoring_error(text: str) -> None:
    with pytest.raises(ScoringError, match="no JSON object"):
        extract_json_object(text)


def test_judge_stated_ratio_is_ignored_in_favour_of_the_lists() -> None:
    lying = {**VERDICT, "precision": 0.99, "recall": 1.0, "claims_supported": 3}
    verdict = parse_judge_output(json.dumps(lying), expected_claims=3)
    assert verdict.claims.value == pytest.approx(2 / 3)
    assert verdict.changes.value == 0.5


def test_zero_claims_means_zero_precision_and_zero_changes_full_recall() -> None:
    verdict = parse_judge_output('{"claims": [], "changes": [], "score": 0}', expected_claims=0)
    assert verdict.claims.value == 0.0
    assert verdict.changes.value == 1.0
    assert verdict.reply_accuracy == 0.0


def test_fewer_verdicts_than_claims_is_unusable_but_extra_ones_are_ignored() -> None:
    with pytest.raises(ScoringError, match="2 claim verdicts for 3 claims"):
        tally_claims({"claims": VERDICT["claims"][:2]}, expected=3)
    tally = tally_claims({"claims": [*VERDICT["claims"], {"claim": "extra", "supported": True}]}, expected=3)
    assert (tally.hits, tally.total) == (2, 3)


def test_claims_beyond_the_cap_count_as_unsupported() -> None:
    claims = [{"claim": f"c{i}", "supported": True} for i in range(MAX_CLAIMS)]
    tally = tally_claims({"claims": claims}, expected=MAX_CLAIMS + 10)
    assert (tally.hits, tally.total) == (MAX_CLAIMS, MAX_CLAIMS + 10)


def test_at_most_ten_changes_are_considered() -> None:
    changes = [{"change": f"c{i}", "surfaced": i < 5} for i in range(10)]
    changes += [{"change": "late", "surfaced": True}] * 5
    tally = tally_changes({"changes": changes})
    assert (tally.hits, tally.total, tally.value) == (5, 10, 0.5)


@pytest.mark.parametrize(("flag", "expected"), [("true", True), ("No", False), (1, True), (0, False)])
def test_lenient_booleans(flag: Any, expected: bool) -> None:
    assert tally_claims({"claims": [{"claim": "x", "supported": flag}]}).hits == int(expected)


@pytest.mark.parametrize("flag", ["maybe", 0.5, None, 2])
def test_non_boolean_verdict_is_unusable(flag: Any) -> None:
    with pytest.raises(ScoringError, match="non-boolean"):
        tally_claims({"claims": [{"claim": "x", "supported": flag}]})


@pytest.mark.parametrize(
    "obj",
    [
        {"changes": [], "score": 1},
        {"claims": "all good", "changes": [], "score": 1},
        {"claims": [{"claim": "no verdict"}], "changes": [], "score": 1},
        {"claims": [], "changes": [{"change": "x"}], "score": 1},
        {"claims": [], "changes": []},
        {"claims": [], "changes": [], "score": "high"},
        {"claims": [], "changes": [], "score": True},
    ],
)
def test_structurally_unusable_output(obj: dict[str, Any]) -> None:
    with pytest.raises(ScoringError):
        parse_judge_output(json.dumps(obj))


@pytest.mark.parametrize(
    ("raw", "snapped"),
    [(0.8, 0.75), (0.9, 1.0), (0.12, 0.0), (0.13, 0.25), (0.625, 0.75), (-3, 0.0), (7, 1.0), ("0.5", 0.5)],
)
def test_reply_accuracy_is_clamped_and_snapped(raw: Any, snapped: float) -> None:
    assert parse_judge_output(json.dumps({"claims": [], "changes": [], "score": raw})).reply_accuracy == snapped


def test_nan_score_is_unusable() -> None:
    with pytest.raises(ScoringError, match="NaN"):
        parse_judge_output('{"claims": [], "changes": [], "score": NaN}')


@given(st.floats(allow_nan=False))
def test_snap_always_lands_on_the_rubric(value: float) -> None:
    snapped = snap_to_rubric(value)
    assert snapped in RUBRIC
    clamped = min(1.0, max(0.0, value))
    assert all(abs(snapped - clamped) <= abs(step - clamped) for step in RUBRIC)


def test_question_is_normalised_and_bounded() -> None:
    assert parse_question('{"question": "  What does\\n truncate   return? "}') == "What does truncate return?"
    assert len(parse_question(json.dumps({"question": "why " * 400}))) == 500
    with pytest.raises(ScoringError, match="question"):
        parse_question('{"question": "   "}')
