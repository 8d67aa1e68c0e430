"""Repeat spread on fixed data against a hand computation; replay ids per (change, repeat)."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime

from echelon_platform.domain.certificate import build_certificate, content_hash
from echelon_platform.domain.repeats import repeat_spread, replay_id_for, spread_ok, with_provenance
from echelon_platform.domain.values import ReplayScore

WEIGHTS = {"precision": 1.0, "recall": 1.0, "reply_accuracy": 2.0}
AT = datetime(2026, 1, 1, tzinfo=UTC)


def score(change: int, repeat: int, supported: int, claims: int, surfaced: int, accuracy: float) -> ReplayScore:
    return ReplayScore(
        replay_id=replay_id_for("RUN", change, repeat),
        ground_truth_id=f"pr-{change}",
        precision=supported / claims,
        recall=surfaced / 4,
        reply_accuracy=accuracy,
        claims_total=claims,
        claims_supported=supported,
        changes_total=4,
        changes_surfaced=surfaced,
        scoring_model="offline-lexical-v1",
        scoring_latency_ms=1.0,
        scored_at=AT,
        repeat=repeat,
    )


# Two changes, three repeats; repeat 2 lost change 1 (a failed replay).
SCORES = [
    score(0, 0, 3, 4, 2, 1.0),
    score(1, 0, 1, 2, 4, 0.5),
    score(0, 1, 2, 4, 2, 0.75),
    score(1, 1, 1, 2, 3, 0.5),
    score(0, 2, 4, 4, 1, 0.25),
]


def test_replay_ids_are_one_per_change_and_repeat() -> None:
    assert replay_id_for("RUN", 7) == replay_id_for("RUN", 7, 0) == "RUN-0007"
    assert [replay_id_for("RUN", 7, r) for r in range(3)] == ["RUN-0007", "RUN-0007-r1", "RUN-0007-r2"]


def test_spread_equals_a_hand_computation() -> None:
    spread = repeat_spread(SCORES, WEIGHTS, 3)
    assert spread is not None and spread.repeats == 3 and spread.scored == [2, 2, 1]
    # Per repeat, by hand: precision (0.75+0.5)/2, (0.5+0.5)/2, 1.0; recall (0.5+1)/2, (0.5+0.75)/2, 0.25;
    # accuracy (1+0.5)/2, (0.75+0.5)/2, 0.25; composite (p + r + 2a) / 4.
    per_repeat = {
        "precision": [0.625, 0.5, 1.0],
        "recall": [0.75, 0.625, 0.25],
        "reply_accuracy": [0.75, 0.625, 0.25],
    }
    per_repeat["composite_score"] = [
        (p + r + 2 * a) / 4
        for p, r, a in zip(per_repeat["precision"], per_repeat["recall"], per_repeat["reply_accuracy"], strict=True)
    ]
    assert set(spread.metrics) == set(per_repeat)
    for name, values in per_repeat.items():
        figure = spread.metrics[name]
        assert figure.mean == round(statistics.fmean(values), 6), name
        assert figure.stdev == round(statistics.stdev(values), 6), name
        assert (figure.min, figure.max) == (round(min(values), 6), round(max(values), 6)), name


def test_identical_repeats_have_no_spread_and_one_repeat_has_none() -> None:
    same = [s.model_copy(update={"repeat": r, "replay_id": f"{s.replay_id}-{r}"}) for s in SCORES[:2] for r in range(3)]
    spread = repeat_spread(same, WEIGHTS, 3)
    assert spread is not None
    assert all(f.stdev == 0 and f.min == f.max == f.mean for f in spread.metrics.values())
    assert repeat_spread(SCORES, WEIGHTS, 1) is None


def test_certificate_carries_the_spread_and_the_link_hashed_and_checkable() -> None:
    cert = build_certificate(
        run_id="RUN",
        construct_id="c",
        scores=SCORES,
        failed=[],
        weights=WEIGHTS,
        min_replays=1,
        ground_truth_source="local_git",
        commit_range="a..b",
        methodology_version="v1",
        timestamp=AT,
    )
    plain = with_provenance(cert, repeats=None, rescored_from=None)
    assert plain == cert and "repeat_spread" not in cert.model_dump(mode="json")
    full = with_provenance(cert, repeats=3, rescored_from="cert-OLD")
    assert full.rescored_from == "cert-OLD" and full.repeat_spread == repeat_spread(SCORES, WEIGHTS, 3)
    assert full.content_hash == content_hash(full) != cert.content_hash
    assert spread_ok(full)
    # The headline is the mean over every scored replay; the spread is over the repeat-wise figures.
    assert full.precision == round(statistics.fmean(s.precision for s in SCORES), 6)
    assert not spread_ok(full.model_copy(update={"repeat_spread": repeat_spread(SCORES[:4], WEIGHTS, 3)}))
    assert not spread_ok(cert.model_copy(update={"repeat_spread": None}))  # scores name repeats: a spread is due
