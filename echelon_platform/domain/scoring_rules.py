"""How counts become ratios: the conventions both the judge parser and certificate checks rely on.

- precision = supported / total claims; 0 claims -> 0.0 (asserting nothing verifiable shows nothing);
- recall = surfaced / listed changes; 0 changes -> 1.0 (nothing to surface);
- reply accuracy is one of the rubric steps.
"""

from __future__ import annotations

RUBRIC = (0.0, 0.25, 0.5, 0.75, 1.0)


def ratio(hits: int, total: int, *, empty: float) -> float:
    return min(1.0, max(0.0, hits / total)) if total else empty


def precision_of(supported: int, total: int) -> float:
    return ratio(supported, total, empty=0.0)


def recall_of(surfaced: int, total: int) -> float:
    return ratio(surfaced, total, empty=1.0)
