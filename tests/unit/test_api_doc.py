"""docs/api.md is generated from the request model: it must match what the API validates today."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_run_request_doc_is_current() -> None:
    render = runpy.run_path(str(ROOT / "scripts" / "gen_api_doc.py"))["render"]
    text = render()
    assert "| `limit` | integer | no | `20` | ≥ 1, ≤ 1000 |" in text
    assert (ROOT / "docs" / "api.md").read_text() == text, "run: python scripts/gen_api_doc.py"
