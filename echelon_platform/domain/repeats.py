"""Repeats and rescores on a certificate: pure functions of the certificate's own scores and the run's request.

A run with `repeats: k` asks the oracle k times per change. Its headline figures stay the mean over every
scored replay (the mean of the k repeat-wise figures when each repeat scored the same changes), so the
offline check of a certificate is unchanged; `repeat_spread` adds each figure computed per repeat and
summarised (mean, sample standard deviation, min, max): 0 spread means the oracle answered the same way.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

from echelon_platform.domain.calibration import calibration_of
from echelon_platform.domain.certificate import DECIMALS, content_hash, weighted_composite
from echelon_platform.domain.values import CalibrationCertificate, MetricSpread, RepeatSpread, ReplayScore

FIGURES = ("precision", "recall", "reply_accuracy")


def replay_id_for(run_id: str, index: int, repeat: int | None = None) -> str:
    """Deterministic per (change, repeat), so a re-ingest after a redelivery yields the same replays; the
    first repeat keeps the id a run without repeats gives its change."""
    base = f"{run_id}-{index:04d}"
    return base if not repeat else f"{base}-r{repeat}"


def _figures(scores: Sequence[ReplayScore], weights: Mapping[str, float]) -> dict[str, float]:
    n = len(scores)
    means = {k: math.fsum(getattr(s, k) for s in scores) / n for k in FIGURES}
    out = {**means, "composite_score": weighted_composite(means, weights)}
    calibration = calibration_of(list(scores))
    if calibration is not None:
        out["calibration_brier"] = calibration.brier_score
        out["expected_calibration_error"] = calibration.expected_calibration_error
    return out


def _spread(values: Sequence[float]) -> MetricSpread:
    mean = math.fsum(values) / len(values)
    var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return MetricSpread(
        mean=round(mean, DECIMALS),
        stdev=round(math.sqrt(var), DECIMALS),
        min=round(min(values), DECIMALS),
        max=round(max(values), DECIMALS),
    )


def repeat_spread(scores: Sequence[ReplayScore], weights: Mapping[str, float], repeats: int) -> RepeatSpread | None:
    """Each figure per repeat, summarised over the repeats that scored any replay; None without repeats."""
    if repeats <= 1:
        return None
    by_repeat: dict[int, list[ReplayScore]] = defaultdict(list)
    for score in scores:
        by_repeat[score.repeat or 0].append(score)
    per_repeat = [_figures(by_repeat[r], weights) for r in range(repeats) if by_repeat[r]]
    # A figure only some repeats have (calibration needs stated confidences) is not compared.
    names = [name for name in per_repeat[0] if all(name in f for f in per_repeat)] if per_repeat else []
    return RepeatSpread(
        repeats=repeats,
        scored=[len(by_repeat[r]) for r in range(repeats)],
        metrics={name: _spread([f[name] for f in per_repeat]) for name in names},
    )


def with_provenance(
    cert: CalibrationCertificate, *, repeats: int | None, rescored_from: str | None
) -> CalibrationCertificate:
    """The certificate with its repeat spread and rescore link, hashed again (before it is signed)."""
    spread = repeat_spread(cert.individual_scores, cert.weights, repeats or 1)
    if spread is None and rescored_from is None:
        return cert
    updated = cert.model_copy(update={"repeat_spread": spread, "rescored_from": rescored_from})
    return updated.model_copy(update={"content_hash": content_hash(updated)})


def spread_ok(cert: CalibrationCertificate) -> bool:
    """Does a stored spread follow from the certificate's own scores (offline check)?"""
    spread = cert.repeat_spread
    if spread is None:
        return all(s.repeat is None for s in cert.individual_scores)
    return spread == repeat_spread(cert.individual_scores, cert.weights, spread.repeats)
