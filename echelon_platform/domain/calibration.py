"""Calibration of an oracle's per-claim confidences against the judge's per-claim verdicts.

The certificate's legacy `brier` is (1 − composite) / 2 and says nothing about calibration. When an oracle
states a confidence in each key claim, these are the real measures: the Brier score (mean squared error of
confidence vs. the 0/1 verdict), a 10-bin reliability curve and the expected calibration error (ECE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from echelon_platform.domain.values import Calibration, ReliabilityBin, ReplayScore

BINS = 10
DECIMALS = 6


def claim_pairs(scores: Sequence[ReplayScore]) -> list[tuple[float, bool]]:
    """(confidence, supported) for every judged claim that carries a confidence, in replay order."""
    pairs: list[tuple[float, bool]] = []
    for score in sorted(scores, key=lambda s: s.replay_id):
        if score.claim_supported is None or score.claim_confidences is None:
            continue
        # Claims beyond the judged ones have no verdict, so they cannot be scored for calibration.
        pairs.extend(zip(score.claim_confidences, score.claim_supported, strict=False))
    return pairs


def bin_of(confidence: float) -> int:
    """Bins are [0, 0.1), [0.1, 0.2), … [0.9, 1.0]; 1.0 belongs to the last."""
    return min(int(confidence * BINS), BINS - 1)


def calibration_of(scores: Sequence[ReplayScore]) -> Calibration | None:
    """Brier score, reliability curve and ECE; None when no judged claim carried a confidence."""
    pairs = claim_pairs(scores)
    if not pairs:
        return None
    n = len(pairs)
    brier = math.fsum((c - float(y)) ** 2 for c, y in pairs) / n
    members: list[list[tuple[float, bool]]] = [[] for _ in range(BINS)]
    for c, y in pairs:
        members[bin_of(c)].append((c, y))
    bins: list[ReliabilityBin] = []
    ece_terms: list[float] = []
    for i, group in enumerate(members):
        if group:
            conf = math.fsum(c for c, _ in group) / len(group)
            rate = sum(1 for _, y in group if y) / len(group)
            ece_terms.append(len(group) / n * abs(conf - rate))
            bins.append(
                ReliabilityBin(
                    lower=i / BINS,
                    upper=(i + 1) / BINS,
                    count=len(group),
                    mean_confidence=round(conf, DECIMALS),
                    supported_rate=round(rate, DECIMALS),
                )
            )
        else:
            bins.append(
                ReliabilityBin(lower=i / BINS, upper=(i + 1) / BINS, count=0, mean_confidence=None, supported_rate=None)
            )
    return Calibration(
        claims=n,
        brier_score=round(brier, DECIMALS),
        expected_calibration_error=round(math.fsum(ece_terms), DECIMALS),
        reliability=bins,
    )
