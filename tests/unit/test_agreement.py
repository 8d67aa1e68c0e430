"""Human–judge agreement: Spearman's ρ with ties and the within-one-step rate, against hand-computed values."""

from __future__ import annotations

import math
from typing import Any

import pytest

from api.stats_scan import leaderboard
from echelon_platform.domain.agreement import agreement, average_ranks, judge_step, spearman


def test_average_ranks_share_ties() -> None:
    assert average_ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]
    assert average_ranks([3, 1, 3, 3]) == [3.0, 1.0, 3.0, 3.0]


def test_spearman_with_ties_matches_the_hand_computation() -> None:
    # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): cov 4.5, variances 4.5 and 5 → ρ = 4.5 / √22.5 = 3 / √10
    assert spearman([1, 2, 2, 3], [0.1, 0.3, 0.2, 0.4]) == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    assert spearman([1, 2, 3], [0.9, 0.5, 0.1]) == pytest.approx(-1.0)
    assert spearman([1], [0.5]) is None
    assert spearman([3, 3, 3], [0.1, 0.2, 0.3]) is None  # constant ratings: ρ undefined


def test_judge_step_rounds_halves_up() -> None:
    assert [judge_step(c) for c in (0.0, 0.124, 0.125, 0.375, 0.5, 1.0)] == [1, 1, 2, 3, 3, 5]


def test_agreement_counts_within_one_step() -> None:
    # judge steps 1, 5, 3, 4 (3.5 rounds up) against ratings 5, 1, 3, 4: two of four within one step.
    # ranks (4, 1, 2, 3) and (1, 4, 2, 3): cov −4, variances 5 → ρ = −0.8
    result = agreement([(5, 0.0), (1, 1.0), (3, 0.5), (4, 0.625)])
    assert result.ratings == 4
    assert result.within_one == 0.5
    assert result.spearman == pytest.approx(-0.8)
    assert agreement([]).spearman is None and agreement([]).within_one is None


def _cert(cert_id: str, model: str, version: str, composites: list[float]) -> dict[str, Any]:
    scores = [
        {
            "replay_id": f"{cert_id}-{i}",
            "precision": c,
            "recall": c,
            "reply_accuracy": c,
            "scoring_model": model,
            "scoring_latency_ms": 1.0,
        }
        for i, c in enumerate(composites)
    ]
    return {
        "certificate_id": cert_id,
        "run_id": f"run-{cert_id}",
        "construct_id": "oracle-a",
        "scoring_model": model,
        "methodology_version": version,
        "composite_score": sum(composites) / len(composites),
        "brier": 0.1,
        "weights": {"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
        "individual_scores": scores,
    }


def test_leaderboard_rows_carry_agreement_per_judge_and_methodology() -> None:
    certs = [_cert("c1", "judge-a", "v1", [0.0, 1.0, 0.5, 0.625]), _cert("c2", "judge-a", "v2", [0.25, 0.75])]
    ratings = {
        "c1": [{"replay_id": f"c1-{i}", "rating": r} for i, r in enumerate([5, 1, 3, 4])],
        "c2": [{"replay_id": "c2-0", "rating": 2}, {"replay_id": "c2-1", "rating": 4}],
    }
    (row,) = leaderboard([], certs, ratings, "scoring_model")
    assert row.key == "judge-a" and row.human_ratings == 6
    # all six: judge steps 1,5,3,4,2,4 vs ratings 5,1,3,4,2,4 → four within one step
    assert row.human_within_one == round(4 / 6, 6)
    by = {(a.scoring_model, a.methodology_version): a for a in row.human_agreement}
    assert by[("judge-a", "v1")].spearman == pytest.approx(-0.8)
    assert by[("judge-a", "v1")].within_one == 0.5
    assert by[("judge-a", "v2")].spearman == pytest.approx(1.0) and by[("judge-a", "v2")].within_one == 1.0
