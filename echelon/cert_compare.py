"""`echelon certificates compare A B`: B against A, from the API's comparison (the math is the API's, in
echelon_platform.domain.compare), shown as one row per figure."""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx

from echelon.client import _raise_for, api_base, unreachable
from echelon_platform.config import Settings

NAMES = {
    "composite_score": "composite",
    "reply_accuracy": "reply accuracy",
    "brier_score": "calibration brier",
    "expected_calibration_error": "calibration ECE",
}


def comparison_table(comparison: dict[str, Any]) -> str:
    if comparison["paired"]:
        head = (
            f"B {comparison['b']} vs A {comparison['a']}: paired over {comparison['shared_changes']} shared changes "
            f"({comparison['a_only']} only in A, {comparison['b_only']} only in B)"
        )
    else:
        head = f"B {comparison['b']} vs A {comparison['a']}: UNPAIRED ({comparison['note']})"
    rows = [("figure", "A", "B", "B − A", "95% interval", "p")]
    for f in comparison["figures"]:
        rows.append(
            (
                NAMES.get(f["figure"], f["figure"]),
                f"{f['a']:.4f}",
                f"{f['b']:.4f}",
                f"{f['difference']:+.4f}",
                f"[{f['low']:+.4f}, {f['high']:+.4f}]",
                f"{f['p_value']:.4g}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    test = "exact" if comparison["exact"] else f"{comparison['permutations']} permutations"
    return "\n".join([head, *lines, f"method: {comparison['method']} ({test}, seed {comparison['seed']})"])


async def compare_command(args: argparse.Namespace, settings: Settings) -> int:
    base = api_base(args.api, settings)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            response = await client.get("/api/v1/verification/certificates/compare", params={"a": args.a, "b": args.b})
    except httpx.HTTPError as exc:
        raise unreachable(base, exc) from exc
    _raise_for(response)
    print(json.dumps(response.json(), indent=2) if args.json else comparison_table(response.json()))
    return 0
