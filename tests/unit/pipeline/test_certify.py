from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest

from echelon_platform.domain.certificate import build_certificate, content_hash, validate_weights, verify_certificate
from echelon_platform.domain.values import CalibrationCertificate, FailedReplay, ReplayScore
from echelon_platform.errors import RequestRejected, StageError

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def score(
    replay_id: str,
    *,
    supported: int = 1,
    claims: int = 1,
    surfaced: int = 1,
    changes: int = 1,
    accuracy: float = 1.0,
    model: str = "claude-sonnet-4-6",
    at: datetime = T0,
) -> ReplayScore:
    # Ratios follow from the counts, exactly as the scorers produce them.
    return ReplayScore(
        replay_id=replay_id,
        ground_truth_id=f"gt-{replay_id}",
        precision=supported / claims if claims else 0.0,
        recall=surfaced / changes if changes else 1.0,
        reply_accuracy=accuracy,
        claims_total=claims,
        claims_supported=supported,
        changes_total=changes,
        changes_surfaced=surfaced,
        scoring_model=model,
        scoring_latency_ms=812.5,
        input_tokens=1500,
        output_tokens=200,
        cost_usd=0.0075,
        scored_at=at,
    )


def failure(replay_id: str, reason: str = "oracle timed out after 30s", stage: str = "invoke") -> FailedReplay:
    return FailedReplay(replay_id=replay_id, ground_truth_id=f"gt-{replay_id}", stage=stage, reason=reason)


def build(scores: list[ReplayScore], failed: list[FailedReplay] | None = None, **kw: Any) -> CalibrationCertificate:
    args: dict[str, Any] = {
        "run_id": "run-01HZX",
        "construct_id": "construct-9",
        "scores": scores,
        "failed": failed or [],
        "weights": None,
        "min_replays": 1,
        "ground_truth_source": "local_git",
        "commit_range": "8b134a0..5bcfc03",
        "methodology_version": "v1",
        "timestamp": T0,
    }
    args.update(kw)
    return build_certificate(**args)


# --- weights -----------------------------------------------------------------------------------


def test_weights_default_to_one_each() -> None:
    assert validate_weights(None) == {"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0}
    assert validate_weights({"recall": 2}) == {"precision": 1.0, "recall": 2.0, "reply_accuracy": 1.0}


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [
        ({"precision": 1, "accuracy": 1}, "unknown weight(s) ['accuracy']"),
        ({"recall": -0.5}, "must not be negative"),
        ({"precision": 0, "recall": 0, "reply_accuracy": 0}, "all weights are zero"),
        ({"precision": float("nan")}, "finite number"),
        ({"precision": True}, "finite number"),
        ({"precision": 1e308, "recall": 1e308, "reply_accuracy": 1e308}, "must be at most 1,000,000"),
    ],
)
def test_bad_weights_are_rejected_with_a_clear_message(weights: dict[str, Any], fragment: str) -> None:
    with pytest.raises(RequestRejected) as info:
        validate_weights(weights)
    assert fragment in str(info.value)


def test_weights_logged_before_the_bound_fail_the_certificate_deterministically() -> None:
    # A StageError ends the run at once; before, `fsum` overflowed and the stage retried it 10 times.
    with pytest.raises(StageError, match="the run's weights cannot be used: weight 'precision' must be at most"):
        build([score("r1")], weights={"precision": 1e308, "recall": 1e308, "reply_accuracy": 1e308})


# --- aggregation -------------------------------------------------------------------------------


def test_means_composite_and_brier() -> None:
    cert = build(
        [
            score("r1", supported=3, claims=4, surfaced=1, changes=2, accuracy=0.75),
            score("r2", supported=1, claims=1, surfaced=2, changes=2, accuracy=0.5),
        ],
        weights={"precision": 2, "recall": 1, "reply_accuracy": 1},
    )
    assert cert.precision == 0.875  # (0.75 + 1) / 2
    assert cert.recall == 0.75  # (0.5 + 1) / 2
    assert cert.reply_accuracy == 0.625
    assert cert.composite_score == round((2 * 0.875 + 0.75 + 0.625) / 4, 6)
    assert cert.brier == round((1 - (2 * 0.875 + 0.75 + 0.625) / 4) * 0.5, 6)
    assert cert.replay_count == cert.sample_size == 2
    assert cert.weights == {"precision": 2.0, "recall": 1.0, "reply_accuracy": 1.0}


def test_composite_is_computed_from_unrounded_means() -> None:
    # recall = 1/3 each; rounding the means first would give 0.555555 instead of 0.555556.
    scores = [
        score("r1", supported=0, claims=1, surfaced=1, changes=3, accuracy=0.75),
        score("r2", supported=1, claims=1, surfaced=1, changes=3, accuracy=0.75),
    ]
    weights = {"precision": 3.0, "recall": 1.0, "reply_accuracy": 2.0}
    cert = build(scores, weights=weights)

    exact = (3 * Fraction(1, 2) + 1 * Fraction(1, 3) + 2 * Fraction(3, 4)) / 6
    assert cert.composite_score == round(float(exact), 6) == 0.555556
    early_rounding = (3 * 0.5 + 1 * round(1 / 3, 6) + 2 * 0.75) / 6
    assert round(early_rounding, 6) != cert.composite_score  # the trap this test guards against
    assert cert.recall == 0.333333
    assert cert.brier == round(float((1 - exact) / 2), 6)


def test_partial_certificate_warns_when_too_few_replays_succeeded() -> None:
    cert = build([score("r1"), score("r2")], [failure("r3"), failure("r4")], min_replays=4)
    assert cert.partial is True
    assert cert.warning is not None and "only 2 of the 4 required replays succeeded" in cert.warning
    full = build([score("r1"), score("r2")], min_replays=2)
    assert full.partial is False and full.warning is None


def test_ground_truth_shorter_than_requested_is_partial_with_a_warning() -> None:
    reason = "the repository has no more pull requests matching limit=20"
    cert = build([score("r1"), score("r2")], requested=20, found=2, shortfall=reason)
    assert cert.partial is True
    assert cert.warning == f"found 2 of the 20 changes asked for ({reason})"
    both = build([score("r1")], [failure("r2")], min_replays=2, requested=5, found=2, shortfall=reason)
    assert both.warning is not None and both.warning.startswith("found 2 of the 5 changes asked for")
    assert "only 1 of the 2 required replays succeeded" in both.warning
    complete = build([score("r1"), score("r2")], requested=2, found=2)
    assert complete.partial is False and complete.warning is None
    older = build([score("r1")], requested=None, found=1)  # events before `requested` was recorded
    assert older.partial is False


def test_all_failed_raises_stage_error_summarising_reasons() -> None:
    failed = [
        failure("r1", "oracle timed out after 30s"),
        failure("r2", "oracle timed out after 30s"),
        failure("r3", "judge output unusable after one repair attempt", stage="score"),
    ]
    with pytest.raises(StageError) as info:
        build([], failed)
    message = str(info.value)
    assert message.startswith("All replays failed: ")
    assert "2x invoke: oracle timed out after 30s" in message
    assert "score: judge output unusable" in message


def test_certificate_is_deterministic_whatever_the_arrival_order() -> None:
    scores = [score(f"r{i}", supported=i % 3, claims=3, accuracy=0.25 * (i % 5)) for i in range(12)]
    failed = [failure("r20"), failure("r21", "oracle returned HTTP 500: boom")]
    first = build(scores, failed)
    shuffled_scores, shuffled_failed = scores[:], failed[:]
    random.Random(7).shuffle(shuffled_scores)
    shuffled_failed.reverse()
    second = build(shuffled_scores, shuffled_failed)
    assert first == second
    assert first.certificate_id == "cert-run-01HZX"
    assert [s.replay_id for s in first.individual_scores] == sorted(s.replay_id for s in scores)
    assert [f.replay_id for f in first.failed_replays] == ["r20", "r21"]


def test_redelivered_outcomes_count_once() -> None:
    late = score("r1", supported=0, at=T0 + timedelta(minutes=5))
    cert = build([score("r1"), late, score("r2")], [failure("r1"), failure("r9")])
    assert cert.replay_count == 2
    assert cert.individual_scores[0].scored_at == T0  # the earliest score of r1 wins
    assert [f.replay_id for f in cert.failed_replays] == ["r9"]  # r1 failed once, then succeeded


def test_scoring_model_lists_distinct_judges_sorted() -> None:
    cert = build([score("r1", model="offline-lexical-v1"), score("r2"), score("r3", model="offline-lexical-v1")])
    assert cert.scoring_model == "claude-sonnet-4-6+offline-lexical-v1"


# --- hashing and verification -----------------------------------------------------------------


def test_hash_verifies_and_survives_a_json_round_trip() -> None:
    cert = build([score("r1", supported=2, claims=3), score("r2", surfaced=0, changes=4)], [failure("r3")])
    assert cert.content_hash == content_hash(cert)
    assert len(cert.content_hash) == 64
    restored = CalibrationCertificate.model_validate_json(cert.model_dump_json())
    assert verify_certificate(restored) == (True, True)


def test_tampering_with_an_aggregate_is_detected() -> None:
    cert = build([score("r1", supported=1, claims=2), score("r2")])
    forged = cert.model_copy(update={"composite_score": 0.99})
    assert verify_certificate(forged) == (False, False)
    # Re-hashing the forgery fixes the hash but not the arithmetic.
    rehashed = forged.model_copy(update={"content_hash": content_hash(forged)})
    assert verify_certificate(rehashed) == (True, False)


def test_tampering_with_an_individual_score_is_detected() -> None:
    cert = build([score("r1", supported=1, claims=2), score("r2")])
    inflated = cert.individual_scores[0].model_copy(update={"precision": 1.0})
    forged = cert.model_copy(update={"individual_scores": [inflated, cert.individual_scores[1]]})
    forged = forged.model_copy(update={"content_hash": content_hash(forged)})
    hash_ok, aggregates_ok = verify_certificate(forged)
    assert hash_ok and not aggregates_ok  # precision no longer follows from 1 of 2 claims


def test_hash_changes_when_any_field_changes() -> None:
    cert = build([score("r1")])
    assert content_hash(cert.model_copy(update={"commit_range": "a..b"})) != cert.content_hash
    assert content_hash(cert.model_copy(update={"content_hash": "x"})) == cert.content_hash


# --- judges and methodology --------------------------------------------------------------------


def test_mixed_judges_are_flagged_by_default_and_refused_on_request() -> None:
    scores = [score("r1", model="anthropic:claude-haiku-4-5"), score("r2", model="anthropic:claude-sonnet-4-6")]
    flagged = build(scores, methodology_hash="ab" * 32)
    assert flagged.mixed_judges is True and flagged.methodology_hash == "ab" * 32
    assert flagged.warning is not None and "different judges" in flagged.warning
    assert verify_certificate(flagged) == (True, True)
    with pytest.raises(StageError, match="judge mixing is refused"):
        build(scores, judge_mixing="refuse")
    single = build([score("r1"), score("r2")], judge_mixing="refuse")
    assert single.mixed_judges is False and single.warning is None


def test_fields_added_later_are_absent_from_older_certificates() -> None:
    cert = build([score("r1")])
    older = cert.model_copy(update={"mixed_judges": None, "methodology_hash": None})
    dumped = older.model_dump(mode="json")
    assert "mixed_judges" not in dumped and "methodology_hash" not in dumped  # their signed bytes are unchanged
    assert "mixed_judges" in cert.model_dump(mode="json")
