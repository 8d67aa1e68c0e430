"""Comparing two certificates: paired differences, their bootstrap interval and permutation test, on fixed data."""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import statistics

from echelon_platform.domain.certificate import composite_with
from echelon_platform.domain.compare import compare
from echelon_platform.domain.repeats import replay_id_for
from echelon_platform.domain.values import CalibrationCertificate, ReplayScore
from tests.unit.pipeline.test_certify import build, score

EQUAL = composite_with({"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0})
# Ten changes scored by A and B: B is better on most (claims supported of 4; reply accuracy).
A_ROWS = [(1, 0.5), (2, 0.5), (2, 0.25), (0, 0.5), (3, 0.75), (1, 0.25), (2, 0.5), (4, 1.0), (1, 0.5), (2, 0.75)]
B_ROWS = [(3, 0.75), (2, 0.75), (3, 0.5), (1, 0.5), (4, 1.0), (1, 0.5), (3, 0.75), (4, 1.0), (2, 0.5), (3, 0.75)]


def scores_of(prefix: str, rows: list[tuple[int, float]], changes: range) -> list[ReplayScore]:
    out = []
    for i, (supported, accuracy) in zip(changes, rows, strict=True):
        s = score(f"{prefix}-{i:02d}", supported=supported, claims=4, accuracy=accuracy)
        out.append(s.model_copy(update={"ground_truth_id": f"pr-{i}"}))
    return out


def cert(run_id: str, scores: list[ReplayScore]) -> CalibrationCertificate:
    return build(scores, run_id=run_id)


def test_paired_difference_interval_and_exact_sign_flip_test_equal_a_reference() -> None:
    a = cert("RA", scores_of("RA", A_ROWS, range(10)))
    b = cert("RB", scores_of("RB", B_ROWS, range(10)))
    result = compare(a, b, EQUAL, EQUAL, same_repository=True)
    assert result.paired and result.shared_changes == 10 and result.a_only == result.b_only == 0
    assert result.exact and result.permutations == 2**10

    per_change = [
        (sb / 4 + 1.0 + ab) / 3 - (sa / 4 + 1.0 + aa) / 3 for (sa, aa), (sb, ab) in zip(A_ROWS, B_ROWS, strict=True)
    ]
    composite = next(f for f in result.figures if f.figure == "composite_score")
    observed = sum(per_change) / 10
    assert math.isclose(composite.difference, round(observed, 6), abs_tol=1e-9)
    assert math.isclose(composite.b - composite.a, observed, abs_tol=2e-6)
    # Sign-flip test, every one of the 2^10 sign patterns.
    flips = [
        abs(sum(s * d for s, d in zip(signs, per_change, strict=True)) / 10)
        for signs in itertools.product((1, -1), repeat=10)
    ]
    expected_p = sum(1 for f in flips if f >= abs(observed) - 1e-12) / 2**10
    assert math.isclose(composite.p_value, round(expected_p, 6), abs_tol=1e-9)
    assert composite.p_value < 0.05
    # Paired bootstrap: the same draws of shared changes for both sides.
    rng = random.Random(int(hashlib.sha256(b"echelon-compare:cert-RA:cert-RB").hexdigest()[:16], 16))
    boot = []
    for _ in range(1000):
        draw = [int(rng.random() * 10) for _ in range(10)]
        boot.append(sum(per_change[i] for i in draw) / 10)
    cuts = statistics.quantiles(boot, n=40, method="inclusive")
    assert math.isclose(composite.low, round(cuts[0], 6), abs_tol=1.5e-6)
    assert math.isclose(composite.high, round(cuts[-1], 6), abs_tol=1.5e-6)
    assert 0 < composite.low < composite.high
    recall = next(f for f in result.figures if f.figure == "recall")
    assert recall.difference == 0.0 and recall.p_value == 1.0  # equal recall on every change


def test_only_shared_changes_are_paired() -> None:
    a = cert("RA", scores_of("RA", A_ROWS, range(10)))
    b = cert("RB", scores_of("RB", B_ROWS[:6], range(4, 10)))
    result = compare(a, b, EQUAL, EQUAL, same_repository=True)
    assert (result.paired, result.shared_changes, result.a_only, result.b_only) == (True, 6, 4, 0)
    precision = next(f for f in result.figures if f.figure == "precision")
    assert math.isclose(precision.a, sum(r[0] / 4 for r in A_ROWS[4:]) / 6, abs_tol=1e-6)


def test_no_shared_change_is_unpaired_and_says_so() -> None:
    a = cert("RA", scores_of("RA", A_ROWS, range(10)))
    b = cert("RB", scores_of("RB", B_ROWS, range(20, 30)))
    result = compare(a, b, EQUAL, EQUAL, same_repository=True)
    assert not result.paired and result.shared_changes == 0 and "UNPAIRED" in result.method
    assert result.note is not None and "no ground-truth change in common" in result.note
    composite = next(f for f in result.figures if f.figure == "composite_score")
    assert math.isclose(composite.difference, round(b.composite_score - a.composite_score, 6), abs_tol=2e-6)
    assert composite.low < composite.difference < composite.high
    # Equal ids in different repositories are different changes: unpaired.
    other = compare(a, cert("RC", scores_of("RC", B_ROWS, range(10))), EQUAL, EQUAL, same_repository=False)
    assert not other.paired and other.note is not None and "different repositories" in other.note


def test_a_certificate_against_an_equal_one_shows_no_difference() -> None:
    a = cert("RA", scores_of("RA", A_ROWS, range(10)))
    b = cert("RB", scores_of("RB", A_ROWS, range(10)))
    result = compare(a, b, EQUAL, EQUAL, same_repository=True)
    assert all(f.difference == 0.0 and f.low == f.high == 0.0 and f.p_value == 1.0 for f in result.figures)
    assert result == compare(a, b, EQUAL, EQUAL, same_repository=True)  # reproducible


def test_repeats_pair_on_each_changes_mean_over_all_its_repeats() -> None:
    # Five changes, three repeats each. On repeat 0 B answers as A does; on repeats 1 and 2 B is right
    # (4 of 4 claims, accuracy 1). Pairing on repeat 0 alone would see no difference.
    def repeated(run_id: str, rows: list[tuple[int, float]]) -> list[ReplayScore]:
        out = []
        for change in range(5):
            for repeat, (supported, accuracy) in enumerate(rows):
                s = score(replay_id_for(run_id, change, repeat), supported=supported, claims=4, accuracy=accuracy)
                out.append(s.model_copy(update={"ground_truth_id": f"pr-{change}", "repeat": repeat}))
        return out

    a = cert("RA", repeated("RA", [(2, 0.5), (2, 0.5), (2, 0.5)]))
    b = cert("RB", repeated("RB", [(2, 0.5), (4, 1.0), (4, 1.0)]))
    result = compare(a, b, EQUAL, EQUAL, same_repository=True)
    assert result.paired and result.shared_changes == 5 and result.a_only == result.b_only == 0
    figures = {f.figure: f for f in result.figures}
    for name in ("precision", "reply_accuracy"):
        assert math.isclose(figures[name].a, 0.5, abs_tol=1e-9)
        # B's figure over its changes is the mean over every one of its replays.
        assert math.isclose(figures[name].b, round((0.5 + 1.0 + 1.0) / 3, 6), abs_tol=1e-9)
        assert math.isclose(figures[name].difference, round(1 / 3, 6), abs_tol=1e-9)
        # Every change moves by the same amount: the bootstrap cannot vary it.
        assert figures[name].low == figures[name].high == figures[name].difference
    # Exact sign-flip test over the five changes: only "no flip" and "all flipped" reach |d|.
    assert math.isclose(figures["precision"].p_value, 2 / 2**5, abs_tol=1e-9)


def test_unpaired_resamples_changes_with_their_repeats_as_one() -> None:
    # A's repeats of each change disagree (0, 2, 4 of 4 claims) but every change averages 2 of 4, as B's
    # replays all are: resampling changes (not replays) leaves no spread at all.
    def repeated(run_id: str, supported: list[int]) -> list[ReplayScore]:
        out = []
        for change in range(5):
            for repeat, n in enumerate(supported):
                s = score(replay_id_for(run_id, change, repeat), supported=n, claims=4)
                out.append(s.model_copy(update={"ground_truth_id": f"{run_id}-pr-{change}", "repeat": repeat}))
        return out

    a = cert("RA", repeated("RA", [0, 2, 4]))
    b = cert("RB", repeated("RB", [2, 2, 2]))
    result = compare(a, b, EQUAL, EQUAL, same_repository=False)
    assert not result.paired and result.a_only == result.b_only == 5
    precision = next(f for f in result.figures if f.figure == "precision")
    assert precision.a == precision.b == 0.5
    assert precision.low == precision.high == precision.difference == 0.0
