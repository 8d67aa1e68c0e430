"""docs/ci/verify-gate.yml is a workflow GitHub can load, and its `echelon verify` line is one the CLI accepts."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from echelon.cli import _parser, verify_usage_error

ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_ci_job_runs_a_gate_the_cli_accepts() -> None:
    workflow = yaml.safe_load((ROOT / "docs" / "ci" / "verify-gate.yml").read_text())
    steps = workflow["jobs"]["certify"]["steps"]
    script = next(s["run"] for s in steps if "echelon verify" in s.get("run", ""))
    command = script[script.index("echelon verify") :].split("|")[0].replace("\\\n", " ")
    words = shlex.split(
        command.replace('"${gates[@]}"', "--fail-under composite=0.75,recall=0.6 --baseline cert-X --max-drop 0.02")
    )
    args = _parser().parse_args(words[1:])
    assert verify_usage_error(args) is None
    assert args.fail_under == {"composite_score": 0.75, "recall": 0.6}
    assert (args.baseline, args.max_drop, args.json) == ("cert-X", {"composite_score": 0.02}, True)
    assert "gates=(--fail-under composite=0.75,recall=0.6)" in script
