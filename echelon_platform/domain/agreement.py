"""How far people agree with the judge: Spearman's ρ and the within-one-step rate on the 1–5 scale.

Pure Python (no scipy): ρ is the Pearson correlation of average ranks, so ties are handled exactly as
scipy.stats.spearmanr does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        shared = (start + end) / 2 + 1
        for k in range(start, end + 1):
            ranks[order[k]] = shared
        start = end + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's ρ with ties; None when undefined (fewer than 2 pairs, or one side is constant)."""
    if len(xs) != len(ys):
        raise ValueError("spearman needs pairs: both sequences of the same length")
    if len(xs) < 2:
        return None
    rx, ry = average_ranks(xs), average_ranks(ys)
    mx, my = math.fsum(rx) / len(rx), math.fsum(ry) / len(ry)
    cov = math.fsum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = math.fsum((a - mx) ** 2 for a in rx)
    vy = math.fsum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return None
    return cov / math.sqrt(vx * vy)


def judge_step(composite: float) -> int:
    """The judge's composite (0–1) on the people's 1–5 scale, halves rounded up (not to even)."""
    return math.floor(1 + 4 * min(1.0, max(0.0, composite)) + 0.5)


@dataclass(frozen=True, slots=True)
class Agreement:
    ratings: int
    spearman: float | None  # rank correlation of ratings with the judge's composites
    within_one: float | None  # share of ratings at most one step from the judge's step


def agreement(pairs: Sequence[tuple[int, float]]) -> Agreement:
    """Agreement over (human rating 1–5, judge composite 0–1) pairs, one per rating."""
    if not pairs:
        return Agreement(ratings=0, spearman=None, within_one=None)
    humans = [float(h) for h, _ in pairs]
    judges = [c for _, c in pairs]
    close = sum(abs(h - judge_step(c)) <= 1 for h, c in pairs)
    rho = spearman(humans, judges)
    return Agreement(
        ratings=len(pairs),
        spearman=None if rho is None else round(rho, 6),
        within_one=round(close / len(pairs), 6),
    )
