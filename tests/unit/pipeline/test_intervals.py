"""95% bootstrap intervals on certificate figures, against a reference computation on fixed data."""

from __future__ import annotations

import hashlib
import math
import random
import statistics

from echelon_platform.domain.certificate import content_hash, verify_certificate
from echelon_platform.domain.intervals import percentile, replays_to_narrow
from echelon_platform.domain.values import FigureInterval, ReplayScore
from tests.unit.pipeline.test_certify import build, score

# Fixed data: 12 replays with known counts and rubric scores, 2 of them with per-claim confidences.
COUNTS = [(3, 3, 2, 2, 1.0), (1, 3, 1, 2, 0.5), (2, 2, 0, 1, 0.75), (0, 2, 1, 1, 0.25), (2, 4, 2, 3, 0.5),
          (1, 1, 1, 1, 1.0), (3, 4, 0, 2, 0.25), (0, 1, 0, 1, 0.0), (2, 3, 2, 2, 0.75), (1, 2, 1, 2, 0.5),
          (4, 4, 3, 3, 1.0), (1, 4, 1, 4, 0.25)]  # fmt: skip


def fixed_scores() -> list[ReplayScore]:
    out = []
    for i, (supported, claims, surfaced, changes, accuracy) in enumerate(COUNTS):
        s = score(
            f"r{i:02d}", supported=supported, claims=claims, surfaced=surfaced, changes=changes, accuracy=accuracy
        )
        if i in (0, 4):
            flags = [True] * supported + [False] * (claims - supported)
            s = s.model_copy(update={"claim_supported": flags, "claim_confidences": [0.95, 0.7, 0.4, 0.15][:claims]})
        out.append(s)
    return out


def reference(scores: list[ReplayScore], run_id: str) -> dict[str, tuple[float, float]]:
    """Written from the documented method alone: seed, draws, statistic, percentiles (statistics module)."""
    seed = int(hashlib.sha256(f"echelon-bootstrap:{run_id}".encode()).hexdigest()[:16], 16)
    rng = random.Random(seed)
    ordered = sorted(scores, key=lambda s: s.replay_id)
    n = len(ordered)
    stats: dict[str, list[float]] = {"precision": [], "recall": [], "reply_accuracy": [], "composite_score": []}
    stats |= {"brier_score": [], "expected_calibration_error": []}
    for _ in range(1000):
        sample = [ordered[int(rng.random() * n)] for _ in range(n)]
        p = sum(s.precision for s in sample) / n
        r = sum(s.recall for s in sample) / n
        a = sum(s.reply_accuracy for s in sample) / n
        stats["precision"].append(p)
        stats["recall"].append(r)
        stats["reply_accuracy"].append(a)
        stats["composite_score"].append((p + r + a) / 3)  # equal weights
        pairs = [
            (c, y) for s in sample for c, y in zip(s.claim_confidences or [], s.claim_supported or [], strict=False)
        ]
        if pairs:
            stats["brier_score"].append(sum((c - y) ** 2 for c, y in pairs) / len(pairs))
            bins: dict[int, list[tuple[float, bool]]] = {}
            for c, y in pairs:
                bins.setdefault(min(int(c * 10), 9), []).append((c, y))
            ece = sum(
                len(g) / len(pairs) * abs(sum(c for c, _ in g) / len(g) - sum(y for _, y in g) / len(g))
                for g in bins.values()
            )
            stats["expected_calibration_error"].append(ece)
    out = {}
    for key, values in stats.items():
        cuts = statistics.quantiles(values, n=40, method="inclusive")  # type 7: cut 1 is 2.5%, cut 39 is 97.5%
        out[key] = (round(cuts[0], 6), round(cuts[-1], 6))
    return out


def test_intervals_equal_a_reference_computation_on_fixed_data() -> None:
    scores = fixed_scores()
    cert = build(scores, run_id="01JFIXEDINTERVALS000000000")
    u = cert.uncertainty
    assert u is not None and u.resamples == 1000 and u.confidence == 0.95
    expected = reference(scores, "01JFIXEDINTERVALS000000000")
    for key, (low, high) in expected.items():
        got = getattr(u, key)
        assert got is not None, key
        assert math.isclose(got.low, low, abs_tol=1.5e-6) and math.isclose(got.high, high, abs_tol=1.5e-6), key
    assert u.precision.n == u.composite_score.n == 12
    assert u.brier_score is not None and u.brier_score.n == 7  # the judged claims that carried a confidence
    # Each interval holds its figure (on this data), and is not degenerate.
    for key in ("precision", "recall", "reply_accuracy", "composite_score"):
        got = getattr(u, key)
        assert got.low < getattr(cert, key) < got.high, key


def test_identical_replays_give_a_zero_width_interval() -> None:
    cert = build([score(f"r{i}", supported=1, claims=2) for i in range(5)])
    assert cert.uncertainty is not None
    assert (cert.uncertainty.precision.low, cert.uncertainty.precision.high) == (0.5, 0.5)
    assert cert.uncertainty.brier_score is None  # no confidences: no calibration interval


def test_percentile_interpolates_between_order_statistics() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([0.0, 10.0], 0.025) == 0.25
    assert percentile([7.0], 0.975) == 7.0


def test_a_wide_composite_interval_says_how_many_more_replays_would_narrow_it() -> None:
    # half-width 0.2 with 10 replays: 10·(0.2/0.1)² = 40 replays, 30 more.
    assert replays_to_narrow(FigureInterval(n=10, low=0.3, high=0.7)) == 30
    assert replays_to_narrow(FigureInterval(n=10, low=0.45, high=0.65)) is None
    few = build([score("r1", accuracy=0.0), score("r2", supported=0, surfaced=0), score("r3")])
    assert few.uncertainty is not None and few.uncertainty.replays_to_narrow is not None
    half = (few.uncertainty.composite_score.high - few.uncertainty.composite_score.low) / 2
    assert few.uncertainty.replays_to_narrow == math.ceil(3 * (half / 0.1) ** 2) - 3


def test_intervals_are_signed_content_and_checked() -> None:
    cert = build(fixed_scores())
    assert verify_certificate(cert) == (True, True)
    assert cert.uncertainty is not None
    moved = cert.uncertainty.model_copy(
        update={"composite_score": cert.uncertainty.composite_score.model_copy(update={"low": 0.01})}
    )
    tampered = cert.model_copy(update={"uncertainty": moved})
    assert content_hash(tampered) != cert.content_hash
    rehashed = tampered.model_copy(update={"content_hash": content_hash(tampered)})
    assert verify_certificate(rehashed) == (True, False)  # a consistent hash, but the interval does not follow


def test_certificates_issued_before_intervals_still_verify() -> None:
    older = build(fixed_scores(), intervals=False)
    assert "uncertainty" not in older.model_dump(mode="json")
    assert verify_certificate(older) == (True, True)
