"""CI gates on a certificate: `echelon verify … --fail-under composite=0.75,recall=0.6` and
`--baseline CERT_ID --max-drop 0.02`. A gate compares the point figure with its threshold; the line it
prints names the figure, its 95% interval and the threshold, so a reader sees how close the call was.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

GATE_FAILED = 3  # exit code of a run that completed but failed a gate (1: the run failed; 2: usage)
ALIASES = {
    "composite": "composite_score",
    "composite_score": "composite_score",
    "precision": "precision",
    "recall": "recall",
    "reply_accuracy": "reply_accuracy",
    "accuracy": "reply_accuracy",
}
SHORT = {"composite_score": "composite"}


def _thresholds(text: str, *, bare: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = part.partition("=")
        if not sep and bare is not None:
            name, value = bare, name
        figure = ALIASES.get(name.strip().lower())
        if figure is None:
            raise argparse.ArgumentTypeError(
                f"unknown figure {name.strip()!r} in {text!r}: use composite, precision, recall or reply_accuracy"
            )
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: the threshold must be a number") from None
        if not 0.0 <= number <= 1.0:
            raise argparse.ArgumentTypeError(f"{part!r}: the threshold must be between 0 and 1")
        out[figure] = number
    return out


def fail_under(text: str) -> dict[str, float]:
    """`composite=0.75,recall=0.6` → {"composite_score": 0.75, "recall": 0.6} (argparse type)."""
    return _thresholds(text, bare=None)


def max_drop(text: str) -> dict[str, float]:
    """`0.02` (the composite) or `composite=0.02,recall=0.05` (argparse type)."""
    return _thresholds(text, bare="composite_score")


@dataclass(frozen=True)
class Check:
    gate: str  # "fail_under" or "max_drop"
    figure: str
    value: float  # the figure (fail_under) or B − A (max_drop)
    low: float | None
    high: float | None
    threshold: float
    passed: bool
    line: str


def _name(figure: str) -> str:
    return SHORT.get(figure, figure)


def _bounds(low: float | None, high: float | None) -> str:
    return f" [{low:.4f}, {high:.4f}]" if low is not None and high is not None else " (no interval)"


def check_fail_under(cert: dict[str, Any], thresholds: dict[str, float]) -> list[Check]:
    checks = []
    for figure, threshold in thresholds.items():
        value = float(cert[figure])
        bounds = (cert.get("uncertainty") or {}).get(figure) or {}
        low, high = bounds.get("low"), bounds.get("high")
        passed = value >= threshold
        verdict = "ok" if passed else "FAIL"
        relation = ">=" if passed else "<"
        line = (
            f"{verdict} {_name(figure)} {value:.4f}{_bounds(low, high)} {relation} --fail-under {threshold:g} "
            f"({cert['id']})"
        )
        checks.append(Check("fail_under", figure, value, low, high, threshold, passed, line))
    return checks


def check_max_drop(comparison: dict[str, Any], drops: dict[str, float]) -> list[Check]:
    by_figure = {f["figure"]: f for f in comparison["figures"]}
    kind = (
        f"paired over {comparison['shared_changes']} changes"
        if comparison["paired"]
        else "UNPAIRED: no change in common"
    )
    checks = []
    for figure, allowed in drops.items():
        f = by_figure[figure]
        difference = float(f["difference"])
        passed = difference >= -allowed
        verdict = "ok" if passed else "FAIL"
        line = (
            f"{verdict} {_name(figure)} {f['b']:.4f} vs baseline {comparison['a']} {f['a']:.4f}: change "
            f"{difference:+.4f}{_bounds(f['low'], f['high'])} ({kind}, p={f['p_value']:.4g}), --max-drop {allowed:g}"
        )
        checks.append(Check("max_drop", figure, difference, f["low"], f["high"], allowed, passed, line))
    return checks


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {
        "type": "gate",
        "passed": all(c.passed for c in checks),
        "checks": [asdict(c) for c in checks],
    }
