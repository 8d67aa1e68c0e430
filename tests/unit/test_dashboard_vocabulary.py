"""The dashboard's topics and status rules are the domain's: vocabulary.js is generated from events.py and
lifecycle.py, and the API's status type lists the lifecycle's statuses."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from api.schemas import StatusName
from echelon_platform.domain.events import TOPICS
from echelon_platform.domain.lifecycle import IMPLIED, Status

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "api" / "dashboard" / "static"


def test_vocabulary_js_is_current() -> None:
    render = runpy.run_path(str(ROOT / "scripts" / "gen_dashboard_vocabulary.py"))["render"]
    assert (STATIC / "vocabulary.js").read_text() == render(), "run: python scripts/gen_dashboard_vocabulary.py"


def test_vocabulary_js_holds_the_lifecycle_rules() -> None:
    text = (STATIC / "vocabulary.js").read_text()
    topic = dict(re.findall(r'^  (\w+): "(verify\.[a-z_.]+)",$', text, flags=re.M))
    implied = {topic[name]: status for name, status in re.findall(r'^  \[TOPIC\.(\w+)\]: "(\w+)",$', text, flags=re.M)}
    assert set(topic.values()) == set(TOPICS)
    assert implied == {t: s.name for t, s in IMPLIED.items()}
    assert f"STATUSES = Object.freeze([{', '.join(repr(s.name) for s in Status)}])".replace("'", '"') in text


def test_no_dashboard_module_but_the_generated_one_spells_a_topic_or_the_status_list() -> None:
    for module in STATIC.rglob("*.js"):
        if module.name == "vocabulary.js":
            continue
        text = module.read_text()
        assert not re.search(r"[\"']verify\.[a-z_]+\.[a-z_]+[\"']", text), module
        assert '"INGESTING"' not in text, module


def test_the_api_status_type_is_the_lifecycle_s() -> None:
    adapter = TypeAdapter(StatusName)
    assert adapter.json_schema() == {"type": "string", "enum": [s.name for s in Status]}
    assert adapter.validate_python("SCORING") == "SCORING"
    with pytest.raises(ValidationError, match=r"Input should be 'PENDING', .* or 'FAILED'"):
        adapter.validate_python("DONE")
