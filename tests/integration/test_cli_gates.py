"""CI gates on real runs: `echelon verify … --fail-under` and `--baseline … --max-drop` exit 3 with one line
naming the figure, its interval and the threshold; `certificates compare` against the API."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from api.app import create_app
from api.options import ApiOptions
from coordinator.assembly import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from pipeline_workers.pipeline import Pipeline
from tests.cli import Result, cli_env, run_cli
from tests.integration.gate_oracles import VAGUE
from tests.integration.test_api_support import serve

SAMPLE = "pipeline_workers.oracles.sample:summarise"


@pytest.fixture
async def cli(settings: Settings, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """A whole stack (coordinator, pipeline, API) and the environment a CLI process reaches it with."""
    settings = settings.model_copy(update={"oracle_allowlist": [*settings.oracle_allowlist, VAGUE]})
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(Services(settings, name="gate-test"))
        coordinator = await stack.enter_async_context(coordinator_for(services, settings))
        pipeline = await stack.enter_async_context(Pipeline(services, settings))
        tasks = [asyncio.create_task(coordinator.run()), asyncio.create_task(pipeline.run(watchdog=False))]
        try:
            app = create_app(settings, services, options=ApiOptions(runs_per_minute=1000, ratings_per_minute=1000))
            address = await stack.enter_async_context(serve(app))
            (tmp_path / "cli").mkdir()
            yield cli_env(
                ECHELON_API_PORT=address.rsplit(":", 1)[1],
                ECHELON_DATA_DIR=str(tmp_path / "cli"),
                ECHELON_JWT_SECRET=settings.jwt_secret.get_secret_value(),
            )
        finally:
            coordinator.stop()
            pipeline.stop()
            await asyncio.gather(*tasks, return_exceptions=True)


async def verify(env: dict[str, str], tmp_path: Path, oracle: str, *gate: str) -> Result:
    args = ("verify", "sample", "--oracle-callable", oracle, "--limit", "3", "--construct-id", oracle.split(":")[1])
    return await run_cli(*args, *gate, cwd=tmp_path, env=env, timeout=120)


def cert_id(stdout: str) -> str:
    match = re.search(r"^certificate\s+(cert-\S+)$", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1)


async def test_gates_exit_non_zero_naming_the_figure_its_interval_and_the_threshold(
    cli: dict[str, str], tmp_path: Path
) -> None:
    # Usage errors are refused before anything runs.
    refused = await verify(cli, tmp_path, SAMPLE, "--max-drop", "0.02")
    assert refused.code == 2 and "--max-drop needs --baseline" in refused.stderr
    refused = await verify(cli, tmp_path, SAMPLE, "--fail-under", "speed=0.5")
    assert refused.code == 2 and "unknown figure 'speed'" in refused.stderr

    # --fail-under: a minimum the sample oracle does not reach fails the build (and implies --watch).
    failed = await verify(cli, tmp_path, SAMPLE, "--fail-under", "composite=0.99,recall=0.01")
    assert failed.code == 3, failed.stderr
    baseline = cert_id(failed.stdout)
    (line,) = failed.stderr.strip().splitlines()
    assert re.fullmatch(
        rf"FAIL composite 0\.\d{{4}} \[0\.\d{{4}}, [01]\.\d{{4}}\] < --fail-under 0\.99 \({baseline}\)", line
    ), line
    assert re.search(r"^ok recall .* >= --fail-under 0\.01", failed.stdout, re.MULTILINE), failed.stdout
    assert re.search(r"^composite\s+0\.\d{6} \[0\.\d{6}, [01]\.\d{6}\] n=3$", failed.stdout, re.MULTILINE)

    # --json: the gate's verdict as the last line, for machines.
    passed = await verify(cli, tmp_path, SAMPLE, "--fail-under", "composite=0.05", "--json")
    assert passed.code == 0, passed.stderr
    gate = json.loads(passed.stdout.strip().splitlines()[-1])
    assert gate["type"] == "gate" and gate["passed"] is True
    (check,) = gate["checks"]
    assert check["figure"] == "composite_score" and check["threshold"] == 0.05 and check["low"] <= check["value"]

    # --baseline: the same oracle on the same changes does not drop; a worse one does.
    same = await verify(cli, tmp_path, SAMPLE, "--baseline", baseline, "--max-drop", "0.02")
    assert same.code == 0, same.stderr
    assert re.search(rf"^ok composite .* vs baseline {baseline} .* change \+0\.0000 ", same.stdout, re.MULTILINE)
    worse = await verify(cli, tmp_path, VAGUE, "--baseline", baseline, "--max-drop", "composite=0.02,precision=0.02")
    assert worse.code == 3, worse.stdout + worse.stderr
    lines = worse.stderr.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [["FAIL", "composite"], ["FAIL", "precision"]], lines
    assert re.fullmatch(
        rf"FAIL composite 0\.\d{{4}} vs baseline {baseline} 0\.\d{{4}}: "
        r"change -0\.\d{4} \[-0\.\d{4}, [-+]0\.\d{4}\] "
        r"\(paired over 3 changes, p=[0-9.e-]+\), --max-drop 0\.02",
        lines[0],
    ), lines[0]
    # An unknown baseline fails before a run is submitted.
    missing = await verify(cli, tmp_path, SAMPLE, "--baseline", "cert-NOPE")
    assert missing.code == 1 and "404" in missing.stderr and "submitted" not in missing.stdout

    # `certificates compare A B`: the same comparison, as a table or JSON.
    worse_id = cert_id(worse.stdout)
    table = await run_cli("certificates", "compare", baseline, worse_id, cwd=tmp_path, env=cli)
    assert table.code == 0, table.stderr
    assert table.stdout.startswith(f"B {worse_id} vs A {baseline}: paired over 3 shared changes"), table.stdout
    assert re.search(r"^precision\s+0\.\d{4}\s+0\.\d{4}\s+-0\.\d{4}\s+\[", table.stdout, re.MULTILINE), table.stdout
    as_json = await run_cli("certificates", "compare", baseline, worse_id, "--json", cwd=tmp_path, env=cli)
    comparison = json.loads(as_json.stdout)
    assert comparison["paired"] and comparison["exact"] and comparison["permutations"] == 8
    # Kept for a person reading the test's tmp dir: what a CI log shows.
    shown = [failed, passed, same, worse, table]
    (tmp_path / "outputs.txt").write_text("\n".join(f"exit {r.code}\n{r.stdout}{r.stderr}" for r in shown))
