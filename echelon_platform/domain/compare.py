"""Is certificate B better than A? Paired differences over the changes both runs scored, with intervals and a test.

Paired (the runs share ground-truth changes of one repository): each figure is computed for A and for B over
the shared changes only, and the difference is B − A. A change replayed several times (a run with repeats)
is one unit: the mean of its repeats' ratios, its repeats' judged claims pooled.
- interval: a paired percentile bootstrap: resample the shared changes with replacement (both sides move
  together), recompute both figures and their difference; 2.5th and 97.5th percentiles (type 7), 1000
  resamples, as for certificate intervals (intervals.py);
- test: a paired permutation test: under "no difference" A's and B's score of one change are exchangeable,
  so each permutation swaps them per change with probability ½ (for a mean, this is the sign-flip test on the
  per-change differences); two-sided p = (1 + #{|d*| ≥ |d|}) / (1 + permutations). With at most 12 shared
  changes every one of the 2^m swaps is enumerated and p is exact (no +1).
Unpaired (no shared change): each side's figure over all its changes (a change's repeats as one unit, as
above); the interval resamples A's and B's changes independently, and the test permutes the pooled changes
between the two sides (two-sample permutation).
Each side's composite uses its own certificate's weights. Random draws: ``random.Random`` seeded from
SHA-256 of both certificate ids, so a comparison is reproducible.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from echelon_platform.domain.intervals import CONFIDENCE, RESAMPLES, Composite, Replay, figures_of, percentile, prepare
from echelon_platform.domain.values import CalibrationCertificate, ReplayScore

PERMUTATIONS = 1000
EXACT_UP_TO = 12  # 2^12 = 4096 swaps: enumerate them all
DECIMALS = 6
FIGURES = ("composite_score", "precision", "recall", "reply_accuracy", "brier_score", "expected_calibration_error")
PAIRED_METHOD = (
    "paired over the shared changes: percentile bootstrap of B − A (1000 resamples of the shared changes); "
    "paired permutation test (per-change swap of A and B, sign-flip for means), two-sided"
)
UNPAIRED_METHOD = (
    "UNPAIRED (the runs share no ground-truth change): percentile bootstrap of B − A resampling each run's "
    "changes independently (1000 resamples; a change's repeats as one); two-sample permutation test on the "
    "pooled changes, two-sided"
)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FigureDifference(_Model):
    figure: str
    a: float = Field(description="A's figure over the compared changes")
    b: float = Field(description="B's figure over the compared changes")
    difference: float = Field(description="B − A")
    low: float = Field(description="2.5th percentile of the bootstrap distribution of B − A")
    high: float = Field(description="97.5th percentile of the bootstrap distribution of B − A")
    p_value: float = Field(description="Two-sided permutation test of no difference")


class Comparison(_Model):
    a: str = Field(description="Certificate A's id")
    b: str = Field(description="Certificate B's id")
    paired: bool = Field(description="True when the figures are over the ground-truth changes both runs scored")
    shared_changes: int
    a_only: int = Field(description="Changes only A scored (left out of a paired comparison)")
    b_only: int
    method: str
    confidence: float
    resamples: int
    permutations: int = Field(description="Permutations the p-values are over (2^m when enumerated exactly)")
    exact: bool = Field(description="Every permutation enumerated: exact p-values")
    seed: str
    figures: list[FigureDifference]
    note: str | None = None


def comparison_seed(a_id: str, b_id: str) -> str:
    return hashlib.sha256(f"echelon-compare:{a_id}:{b_id}".encode()).hexdigest()[:16]


def _difference(a: Sequence[Replay], b: Sequence[Replay], ca: Composite, cb: Composite) -> dict[str, float]:
    fa, fb = figures_of(a, ca), figures_of(b, cb)
    return {k: fb[k] - fa[k] for k in FIGURES if k in fa and k in fb}


def _interval(values: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(values)
    tail = (1.0 - CONFIDENCE) / 2
    return percentile(ordered, tail), percentile(ordered, 1.0 - tail)


def compare(
    a: CalibrationCertificate,
    b: CalibrationCertificate,
    composite_a: Composite,
    composite_b: Composite,
    *,
    same_repository: bool,
) -> Comparison:
    """Compare certificate B with A (``same_repository``: the runs' changes come from one repository, so
    equal ground-truth ids are the same change)."""
    by_change_a = _by_change(a.individual_scores)
    by_change_b = _by_change(b.individual_scores)
    shared = sorted(set(by_change_a) & set(by_change_b)) if same_repository else []
    seed = comparison_seed(a.certificate_id, b.certificate_id)
    rng = random.Random(int(seed, 16))
    samples: dict[str, list[float]] = {}
    extreme: dict[str, int] = {}
    if shared:
        xs = [by_change_a[k] for k in shared]
        ys = [by_change_b[k] for k in shared]
        observed = _difference(xs, ys, composite_a, composite_b)
        m = len(shared)
        for _ in range(RESAMPLES):
            draw = [int(rng.random() * m) for _ in range(m)]
            for key, value in _difference(
                [xs[i] for i in draw], [ys[i] for i in draw], composite_a, composite_b
            ).items():
                samples.setdefault(key, []).append(value)
        exact = m <= EXACT_UP_TO
        swaps: Sequence[Sequence[bool]] = (
            list(itertools.product((False, True), repeat=m))
            if exact
            else [[rng.random() < 0.5 for _ in range(m)] for _ in range(PERMUTATIONS)]
        )
        for swap in swaps:
            pa = [y if s else x for x, y, s in zip(xs, ys, swap, strict=True)]
            pb = [x if s else y for x, y, s in zip(xs, ys, swap, strict=True)]
            _count_extreme(extreme, observed, _difference(pa, pb, composite_a, composite_b))
        count = len(swaps)
        fa, fb = figures_of(xs, composite_a), figures_of(ys, composite_b)
    else:
        # Changes, not replays, are the units (a change's repeats are not independent draws), in the order of
        # their first replay: without repeats that is each replay, as before.
        xs = list(by_change_a.values())
        ys = list(by_change_b.values())
        observed = _difference(xs, ys, composite_a, composite_b)
        na, nb = len(xs), len(ys)
        for _ in range(RESAMPLES):
            ra = [xs[int(rng.random() * na)] for _ in range(na)]
            rb = [ys[int(rng.random() * nb)] for _ in range(nb)]
            for key, value in _difference(ra, rb, composite_a, composite_b).items():
                samples.setdefault(key, []).append(value)
        pooled = xs + ys
        exact = False
        for _ in range(PERMUTATIONS):
            shuffled = pooled[:]
            for i in range(len(shuffled) - 1, 0, -1):  # Fisher–Yates on random(), reproducible across versions
                j = int(rng.random() * (i + 1))
                shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
            _count_extreme(extreme, observed, _difference(shuffled[:na], shuffled[na:], composite_a, composite_b))
        count = PERMUTATIONS
        fa, fb = figures_of(xs, composite_a), figures_of(ys, composite_b)
    figures = []
    for key in FIGURES:
        if key not in observed or not samples.get(key):
            continue
        low, high = _interval(samples[key])
        hits = extreme.get(key, 0)
        p = hits / count if exact else (1 + hits) / (1 + count)
        figures.append(
            FigureDifference(
                figure=key,
                a=round(fa[key], DECIMALS),
                b=round(fb[key], DECIMALS),
                difference=round(observed[key], DECIMALS),
                low=round(low, DECIMALS),
                high=round(high, DECIMALS),
                p_value=round(p, DECIMALS),
            )
        )
    return Comparison(
        a=a.certificate_id,
        b=b.certificate_id,
        paired=bool(shared),
        shared_changes=len(shared),
        a_only=len(by_change_a) - len(shared),
        b_only=len(by_change_b) - len(shared),
        method=PAIRED_METHOD if shared else UNPAIRED_METHOD,
        confidence=CONFIDENCE,
        resamples=RESAMPLES,
        permutations=count,
        exact=exact,
        seed=seed,
        figures=figures,
        note=None if shared else _unpaired_reason(same_repository),
    )


def _unpaired_reason(same_repository: bool) -> str:
    if not same_repository:
        return "the runs are over different repositories: no change is shared, so the comparison is unpaired"
    return "the runs scored no ground-truth change in common: the comparison is unpaired"


def _by_change(scores: Sequence[ReplayScore]) -> dict[str, Replay]:
    """Each change's replays (its repeats) as one unit: the mean of their ratios and their judged claims pooled,
    so a paired comparison uses every repeat and a change weighs the same however often it was replayed."""
    grouped: dict[str, list[Replay]] = {}
    for s in sorted(scores, key=lambda s: s.replay_id):
        grouped.setdefault(s.ground_truth_id, []).append(prepare(s))
    return {change: _mean(replays) for change, replays in grouped.items()}


def _mean(replays: Sequence[Replay]) -> Replay:
    if len(replays) == 1:
        return replays[0]
    n = len(replays)
    bins: dict[int, tuple[float, int]] = {}
    for r in replays:
        for b, conf, hits in r.bins:
            c, h = bins.get(b, (0.0, 0))
            bins[b] = (c + conf, h + hits)
    # Claims pool (calibration is over claims, as on the certificate): with k repeats a change's claims are k
    # times as many, which leaves the Brier score and ECE of equally repeated changes as the certificate's.
    return Replay(
        precision=math.fsum(r.precision for r in replays) / n,
        recall=math.fsum(r.recall for r in replays) / n,
        reply_accuracy=math.fsum(r.reply_accuracy for r in replays) / n,
        claims=sum(r.claims for r in replays),
        squared_error=math.fsum(r.squared_error for r in replays),
        bins=tuple((b, c, h) for b, (c, h) in sorted(bins.items())),
    )


def _count_extreme(extreme: dict[str, int], observed: Mapping[str, float], permuted: Mapping[str, float]) -> None:
    for key, value in permuted.items():
        # A tolerance so that a permutation equal to the observed difference counts despite float noise.
        if key in observed and abs(value) >= abs(observed[key]) - 1e-12:
            extreme[key] = extreme.get(key, 0) + 1
