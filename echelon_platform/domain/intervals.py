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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Replay:
    """One replay's share of every figure, computed once (a resample visits it many times)."""

    precision: float
    recall: float
    reply_accuracy: float
    claims: int  # judged claims that carry a confidence
    squared_error: float  # Σ (confidence − supported)² over them
    bins: tuple[tuple[int, float, int], ...]  # (bin, Σ confidence, supported) per non-empty confidence bin


def prepare(score: ReplayScore) -> Replay:
    pairs = _pairs(score)
    by_bin: dict[int, tuple[float, int]] = {}
    for c, y in pairs:
        conf, hits = by_bin.get(bin_of(c), (0.0, 0))
        by_bin[bin_of(c)] = (conf + c, hits + int(y))
    return Replay(
        precision=score.precision,
        recall=score.recall,
        reply_accuracy=score.reply_accuracy,
        claims=len(pairs),
        squared_error=math.fsum((c - float(y)) ** 2 for c, y in pairs),
        bins=tuple((b, conf, hits) for b, (conf, hits) in sorted(by_bin.items())),
    )


def _pairs(score: ReplayScore) -> list[tuple[float, bool]]:
    if score.claim_supported is None or score.claim_confidences is None:
        return []
    return list(zip(score.claim_confidences, score.claim_supported, strict=False))


def figures_of(replays: Sequence[Replay], composite: Composite) -> dict[str, float]:
    """The unrounded figures of some replays (a resample may hold one replay several times): means, the
    weighted composite, and over the judged claims with a confidence the Brier score and the ECE
    (Σ over bins of |Σ confidence − Σ supported| / claims, which is Σ bin share × |mean confidence − rate|)."""
    n = len(replays)
    means = {
        "precision": math.fsum(r.precision for r in replays) / n,
        "recall": math.fsum(r.recall for r in replays) / n,
        "reply_accuracy": math.fsum(r.reply_accuracy for r in replays) / n,
    }
    out = {**means, "composite_score": composite(means)}
    claims = sum(r.claims for r in replays)
    if claims:
        conf = [0.0] * BINS
        hits = [0] * BINS
        for r in replays:
            for b, c, h in r.bins:
                conf[b] += c
                hits[b] += h
        out["brier_score"] = math.fsum(r.squared_error for r in replays) / claims
        out["expected_calibration_error"] = math.fsum(abs(conf[b] - hits[b]) for b in range(BINS)) / claims
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
    ordered = [prepare(s) for s in sorted(scores, key=lambda s: s.replay_id)]
    n = len(ordered)
    seed = bootstrap_seed(run_id)
    samples: dict[str, list[float]] = {}
    for draw in resample_indices(seed, n):
        for key, value in figures_of([ordered[i] for i in draw], composite).items():
            samples.setdefault(key, []).append(value)
    claims = sum(r.claims for r in ordered)
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
