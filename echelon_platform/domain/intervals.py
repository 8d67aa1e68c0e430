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
import operator
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import repeat, starmap

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
# With repeats (several replays of one change) the replays of a change are not independent: the unit
# resampled is the change, each drawn change bringing all its scored replays.
CHANGE_METHOD = (
    "percentile bootstrap over changes (a change's repeats move together): 1000 resamples of the scored "
    "changes with replacement, each bringing all its scored replays; 2.5th and 97.5th percentiles (linear "
    "interpolation), random.Random(int(seed, 16)), index int(random() * changes), changes in order of their "
    "first replay id; seed = sha256('echelon-bootstrap:' + run_id)[:16]"
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


def draws(seed: str, n: int, resamples: int = RESAMPLES) -> Iterator[list[int]]:
    """The draws of every resample, one list of n indices in [0, n) at a time: ``int(random() * n)``, in C."""
    rng = random.Random(int(seed, 16))
    scale = float(n)  # random() * n multiplies by float(n) too
    for _ in range(resamples):
        yield list(map(int, map(scale.__mul__, starmap(rng.random, repeat((), n)))))


def resample_indices(seed: str, n: int, resamples: int = RESAMPLES) -> list[list[int]]:
    """The draws of every resample: ``resamples`` lists of n indices in [0, n)."""
    return list(draws(seed, n, resamples))


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


_SUMMED = ("precision", "recall", "reply_accuracy", "squared_error")
_MAX_FIELD_BITS = 512  # wider exact fields (tiny or huge values) are summed with fsum instead


@dataclass(frozen=True)
class _Field:
    offset: int
    width: int
    denominator: int  # a power of two: the field holds value × denominator, an integer


@dataclass(frozen=True)
class _Columns:
    """The replays' shares as columns, so that a resample is summed by C loops over its indices.

    Bit for bit the arithmetic of ``figures_of``:
    - integer counts (claims, hits per bin) are packed as bit fields of one int per replay, so one ``sum``
      over a resample's indices gives them all, exactly;
    - each fsum'd share (precision, recall, reply accuracy, squared error) goes into the same int as an
      integer over a power-of-two denominator when every value is a finite float ≥ +0.0: the sum of those
      integers over the denominator is then the exact sum, and ``int / int`` rounds it correctly, which
      is what ``math.fsum`` returns; otherwise it is fsum'd as a column;
    - each bin's confidence is summed left to right like ``conf[b] += c`` (that rounding is part of the
      figure), two bins per complex number (its parts add as two independent doubles), a replay without
      the bin adding 0.0 (x + 0.0 is x for x ≥ 0); bins no replay uses stay 0.0 and are not summed.
    """

    packed: list[int]
    count_width: int  # field 0: claims, field 1 + b: hits in bin b
    exact: dict[str, _Field]
    loose: dict[str, list[float]]  # shares that are fsum'd
    confidence: list[list[complex]]  # per pair of used bins: each replay's Σ confidence in each
    lane_bins: list[tuple[int, int | None]]  # the bins of each pair (None: no second bin)


def _as_integers(values: list[float]) -> tuple[list[int], int] | None:
    if not all(math.isfinite(v) and math.copysign(1.0, v) > 0 for v in values):
        return None
    ratios = [v.as_integer_ratio() for v in values]
    denominator = max(d for _, d in ratios)
    return [p * (denominator // d) for p, d in ratios], denominator


def _columns(replays: Sequence[Replay]) -> _Columns:
    n = len(replays)
    count_width = (max((r.claims for r in replays), default=0) * n).bit_length() + 1
    packed = []
    lanes = [[0.0] * n for _ in range(BINS)]
    used: set[int] = set()
    for i, r in enumerate(replays):
        counts = r.claims
        for b, c, h in r.bins:
            counts |= h << (count_width * (1 + b))
            lanes[b][i] = c
            used.add(b)
        packed.append(counts)
    offset = count_width * (1 + BINS)
    exact: dict[str, _Field] = {}
    loose: dict[str, list[float]] = {}
    for name in _SUMMED:
        column = [getattr(r, name) for r in replays]
        integers = _as_integers(column)
        width = (max(integers[0], default=0) * n).bit_length() + 1 if integers is not None else 0
        if integers is None or width > _MAX_FIELD_BITS:
            loose[name] = column
            continue
        exact[name] = _Field(offset, width, integers[1])
        packed = [p | (m << offset) for p, m in zip(packed, integers[0], strict=True)]
        offset += width
    zeros = [0.0] * n
    bins = sorted(used)
    pairs = [(bins[k], bins[k + 1] if k + 1 < len(bins) else None) for k in range(0, len(bins), 2)]
    return _Columns(
        packed=packed,
        count_width=count_width,
        exact=exact,
        loose=loose,
        confidence=[list(map(complex, lanes[a], lanes[b] if b is not None else zeros)) for a, b in pairs],
        lane_bins=pairs,
    )


def bootstrap_samples(replays: Sequence[Replay], composite: Composite, seed: str) -> dict[str, list[float]]:
    """Every resample's unrounded figures (as ``figures_of`` computes them), per figure, in draw order."""
    n = len(replays)
    cols = _columns(replays)
    width = cols.count_width
    mask = (1 << width) - 1
    samples: dict[str, list[float]] = {}
    for draw in draws(seed, n):
        total = sum(map(cols.packed.__getitem__, draw))
        sums = {name: ((total >> f.offset) & ((1 << f.width) - 1)) / f.denominator for name, f in cols.exact.items()}
        for name, column in cols.loose.items():
            sums[name] = math.fsum(map(column.__getitem__, draw))
        means = {"precision": sums["precision"] / n, "recall": sums["recall"] / n}
        means["reply_accuracy"] = sums["reply_accuracy"] / n
        out = {**means, "composite_score": composite(means)}
        claims = total & mask
        if claims:
            conf = [0.0] * BINS
            for lane, (a, b) in zip(cols.confidence, cols.lane_bins, strict=True):
                pair = reduce(operator.add, map(lane.__getitem__, draw), 0j)
                conf[a] = pair.real
                if b is not None:
                    conf[b] = pair.imag
            hits = [(total >> (width * (1 + b))) & mask for b in range(BINS)]
            out["brier_score"] = sums["squared_error"] / claims
            out["expected_calibration_error"] = math.fsum(abs(conf[b] - hits[b]) for b in range(BINS)) / claims
        for key, value in out.items():
            samples.setdefault(key, []).append(value)
    return samples


def change_samples(changes: Sequence[Sequence[Replay]], composite: Composite, seed: str) -> dict[str, list[float]]:
    """Every resample's figures when the unit drawn is a change (with all its replays, in draw order)."""
    samples: dict[str, list[float]] = {}
    for draw in draws(seed, len(changes)):
        for key, value in figures_of([r for c in draw for r in changes[c]], composite).items():
            samples.setdefault(key, []).append(value)
    return samples


def replays_to_narrow(composite: FigureInterval) -> int | None:
    """More replays needed for a composite interval of ±TARGET_HALF_WIDTH; None when it is that narrow."""
    half = (composite.high - composite.low) / 2
    if half <= TARGET_HALF_WIDTH:
        return None
    return max(1, math.ceil(composite.n * (half / TARGET_HALF_WIDTH) ** 2) - composite.n)


def uncertainty_of(scores: Sequence[ReplayScore], composite: Composite, run_id: str) -> Uncertainty:
    """n and a 95% bootstrap interval for each figure of a certificate over ``scores`` (in certificate
    order: sorted by replay id)."""
    ordered_scores = sorted(scores, key=lambda s: s.replay_id)
    ordered = [prepare(s) for s in ordered_scores]
    n = len(ordered)
    seed = bootstrap_seed(run_id)
    changes: dict[str, list[Replay]] = {}
    for score, replay in zip(ordered_scores, ordered, strict=True):
        changes.setdefault(score.ground_truth_id, []).append(replay)
    if len(changes) == n:  # one replay per change: the replay is the change (every certificate before repeats)
        method, samples = METHOD, bootstrap_samples(ordered, composite, seed)
    else:
        method, samples = CHANGE_METHOD, change_samples(list(changes.values()), composite, seed)
    claims = sum(r.claims for r in ordered)
    calibrated = {
        key: interval(samples[key], claims) if claims and key in samples else None
        for key in ("brier_score", "expected_calibration_error")
    }
    composite_interval = interval(samples["composite_score"], n)
    return Uncertainty(
        method=method,
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
