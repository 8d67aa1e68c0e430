"""The one JSON report of a chaos run: per-component recovery statistics next to the checks' findings."""

from __future__ import annotations

import math
from typing import Any

from echelon.chaos.cluster import Exit
from echelon.chaos.faults import Fault


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): with few samples p99 is the maximum, never an interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 3)


def _timing(values: list[float]) -> dict[str, Any]:
    return {"p50_s": percentile(values, 50), "p99_s": percentile(values, 99), "max_s": percentile(values, 100)}


def per_component(faults: list[Fault]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in sorted({f.kind for f in faults}):
        mine = [f for f in faults if f.kind == kind]
        recovered = [f.recovery_s for f in mine if f.recovery_s is not None]
        entry: dict[str, Any] = {
            "kills": len(mine),
            "not_recovered": len(mine) - len(recovered),
            "recovery": _timing(recovered),
        }
        takeovers = [f.takeover_s for f in mine if f.takeover_s is not None]
        if takeovers or kind in ("coordinator", "postgres"):
            entry["takeover"] = _timing(takeovers)
        if kind == "worker":
            entry["targets"] = {t: sum(1 for f in mine if f.target == t) for t in sorted({f.target for f in mine})}
        out[kind] = entry
    return out


def unexpected_exits(exits: list[Exit]) -> list[dict[str, Any]]:
    return [{"component": e.component, "code": e.code} for e in exits if not e.expected]


def build(
    *,
    config: dict[str, Any],
    faults: list[Fault],
    exits: list[Exit],
    load: dict[str, Any],
    reference: dict[str, Any],
    findings: dict[str, Any],
    timings: dict[str, Any],
) -> dict[str, Any]:
    violations = dict(findings.pop("violations"))
    for fault in faults:
        if fault.recovery_s is None:
            violations.setdefault("component_not_recovered", {"count": 0, "examples": []})
            violations["component_not_recovered"]["count"] += 1
            violations["component_not_recovered"]["examples"].append(fault.as_dict())
    # A role that died on its own must have said so with a non-zero code (issue: a failure never stops a role
    # silently); the supervisor restarted it either way.
    silent = [e for e in unexpected_exits(exits) if e["code"] == 0]
    if silent:
        violations["role_exited_zero"] = {"count": len(silent), "examples": silent}
    return {
        "ok": not violations,
        "violation_count": sum(v["count"] for v in violations.values()),
        "violations": violations,
        "config": config,
        "components": per_component(faults),
        "unexpected_exits": unexpected_exits(exits),
        "timings": timings,
        "load": load,
        "reference_certificate": reference,
        **findings,
        "faults": [f.as_dict() for f in faults],
    }
