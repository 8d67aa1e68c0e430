"""95% intervals on a certificate's figures: a percentile bootstrap over its replays, reproducible from the run.

Method (stated on every certificate, see docs/certificates-intervals.md):
- the unit resampled is the replay (one ground-truth change): draw n replays with replacement, n = the
  replays scored; recompute each figure from the resample exactly as the certificate computes it
  (means, weighted composite, calibration Brier and ECE over the resample's judged claims);
- ``RESAMPLES`` = 1000 resamples; the interval is the 2.5th and 97.5th percentile of the resampled figures,
  by linear interpolation between order statistics (Hyndman–Fan type 7, numpy's default), rounded to 6 dp;
- the random draws come from Python's ``random.Random`` seeded with ``int(seed, 16)``, where the seed is
  the first 16 hex digits of SHA-256(``"echelon-bootstrap:" + run_id``), and index i of a draw is
  ``int(random() * n)``: ``random()``'s sequence for a given seed is a documented guarantee of Python, so
  anyone (and `rederive`) recomputes the same interval bit for bit;
- resamples without any judged claim that carries a confidence are left out of the calibration figures
  (their n is the claims the certificate's calibration is over);
- a composite interval wider than ±``TARGET_HALF_WIDTH`` names how many more replays would narrow it to
  that: the half-width shrinks as 1/√n, so n' = ⌈n · (half-width / 0.1)²⌉ replays, i.e. n' − n more.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence

from echelon_platform.domain.calibration import BINS, bin_of
from echelon_platform.domain.values import FigureInterval, ReplayScore, Uncertainty

RESAMPLES = 1000
CONFIDENCE = 0.95
TARGET_HALF_WIDTH = 0.1
DECIMALS = 6
METHOD = (
    "percentile bootstrap over replays: 1000 resamples of the scored replays with replacement, 2.5th and 97.5th "
    "percentiles (linear interpolation), random.Random(int(seed, 16)), index int(random() * n); "
    "seed = sha256('echelon-bootstrap:' + run_id)[:16]"
)
Composite = Callable[[Mapping[str, float]], float]
_MEANS = ("precision", "recall", "reply_accuracy")


def bootstrap_seed(run_id: str) -> str:
    return hashlib.sha256(f"echelon-bootstrap:{run_id}".encode()).hexdigest()[:16]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1) of sorted values, linear between order statistics (type 7)."""
    h = (len(ordered) - 1) * q
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def resample_indices(seed: str, n: int, resamples: int = RESAMPLES) -> list[list[int]]:
    """The draws of every resample: ``resamples`` lists of n indices in [0, n)."""
    rng = random.Random(int(seed, 16))
    return [[int(rng.random() * n) for _ in range(n)] for _ in range(resamples)]


def interval(values: Sequence[float], n: int) -> FigureInterval:
    ordered = sorted(values)
    tail = (1.0 - CONFIDENCE) / 2
    return FigureInterval(
        n=n,
        low=round(percentile(ordered, tail), DECIMALS),
        high=round(percentile(ordered, 1.0 - tail), DECIMALS),
    )


def _pairs(score: ReplayScore) -> list[tuple[float, bool]]:
    if score.claim_supported is None or score.claim_confidences is None:
        return []
    return list(zip(score.claim_confidences, score.claim_supported, strict=False))


def _calibration(pairs: Sequence[tuple[float, bool]]) -> tuple[float, float]:
    """(Brier, ECE) of some (confidence, supported) pairs, as calibration.calibration_of computes them."""
    n = len(pairs)
    brier = math.fsum((c - float(y)) ** 2 for c, y in pairs) / n
    members: list[list[tuple[float, bool]]] = [[] for _ in range(BINS)]
    for c, y in pairs:
        members[bin_of(c)].append((c, y))
    terms = []
    for group in members:
        if group:
            conf = math.fsum(c for c, _ in group) / len(group)
            rate = sum(1 for _, y in group if y) / len(group)
            terms.append(len(group) / n * abs(conf - rate))
    return brier, math.fsum(terms)


def figures_of(scores: Sequence[ReplayScore], composite: Composite) -> dict[str, float]:
    """The unrounded figures of some replays (a resample may hold one replay several times)."""
    n = len(scores)
    means = {k: math.fsum(getattr(s, k) for s in scores) / n for k in _MEANS}
    out = {**means, "composite_score": composite(means)}
    pairs = [p for s in scores for p in _pairs(s)]
    if pairs:
        out["brier_score"], out["expected_calibration_error"] = _calibration(pairs)
    return out


def replays_to_narrow(composite: FigureInterval) -> int | None:
    """More replays needed for a composite interval of ±TARGET_HALF_WIDTH; None when it is that narrow."""
    half = (composite.high - composite.low) / 2
    if half <= TARGET_HALF_WIDTH:
        return None
    return max(1, math.ceil(composite.n * (half / TARGET_HALF_WIDTH) ** 2) - composite.n)


def uncertainty_of(scores: Sequence[ReplayScore], composite: Composite, run_id: str) -> Uncertainty:
    """n and a 95% bootstrap interval for each figure of a certificate over ``scores`` (in certificate
    order: sorted by replay id)."""
    ordered = sorted(scores, key=lambda s: s.replay_id)
    n = len(ordered)
    seed = bootstrap_seed(run_id)
    samples: dict[str, list[float]] = {}
    for draw in resample_indices(seed, n):
        for key, value in figures_of([ordered[i] for i in draw], composite).items():
            samples.setdefault(key, []).append(value)
    claims = sum(len(_pairs(s)) for s in ordered)
    calibrated = {
        key: interval(samples[key], claims) if claims and key in samples else None
        for key in ("brier_score", "expected_calibration_error")
    }
    composite_interval = interval(samples["composite_score"], n)
    return Uncertainty(
        method=METHOD,
        confidence=CONFIDENCE,
        resamples=RESAMPLES,
        seed=seed,
        precision=interval(samples["precision"], n),
        recall=interval(samples["recall"], n),
        reply_accuracy=interval(samples["reply_accuracy"], n),
        composite_score=composite_interval,
        brier_score=calibrated["brier_score"],
        expected_calibration_error=calibrated["expected_calibration_error"],
        replays_to_narrow=replays_to_narrow(composite_interval),
    )
