"""docs/configuration.md is generated from the Settings class: every setting is described and the page is
current."""

from __future__ import annotations

import runpy
from pathlib import Path

from echelon_platform.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"add a docstring under these fields in echelon_platform/config.py: {missing}"


def test_configuration_doc_is_current() -> None:
    render = runpy.run_path(str(ROOT / "scripts" / "gen_config_doc.py"))["render"]
    text = render()
    assert "| `ECHELON_PARTITIONS` | integer | `1` | ≥ 1, ≤ 64 |" in text
    assert "| `ECHELON_DATABASE_URL` / `DATABASE_URL` | string | unset |" in text
    assert (ROOT / "docs" / "configuration.md").read_text() == text, "run: python scripts/gen_config_doc.py"
