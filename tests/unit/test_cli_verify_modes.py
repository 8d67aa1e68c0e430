"""`echelon verify` beyond a plain submission: usage checks, --dry-run (no API, nothing published) and the
shape of --json stage lines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from echelon.cli import _parser, verify_usage_error
from echelon.client import stage_json
from echelon.watch import Progress
from pipeline_workers.fixtures import materialise_sample_repo
from tests.cli import cli_env, run_cli

SAMPLE_ORACLE = "pipeline_workers.oracles.sample:summarise"
SAMPLE_CHANGES = 8  # PR merges in the bundled sample repository (tests/fixtures/make_sample_repo.sh)


def usage(*argv: str) -> str | None:
    return verify_usage_error(_parser().parse_args(["verify", *argv]))


def test_verify_needs_a_repository_or_resume_and_an_oracle_unless_dry_run() -> None:
    assert usage("sample", "--oracle-callable", SAMPLE_ORACLE) is None
    assert usage("sample", "--dry-run") is None
    assert usage("--resume", "run-1") is None
    assert "repository" in (usage() or "")
    assert "--oracle-url" in (usage("sample") or "")
    assert "no repository" in (usage("sample", "--resume", "run-1") or "")
    assert "no repository" in (usage("--resume", "run-1", "--dry-run") or "")
    assert "oracle" in (usage("--resume", "run-1", "--oracle-url", "http://x") or "")


async def test_a_usage_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = await run_cli("verify", cwd=tmp_path, env=cli_env())
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        "echelon verify: verify needs a repository (a GitHub URL, a local path or 'sample'), or --resume RUN_ID"
    ]
    assert result.stdout == ""


def test_stage_json_is_one_object_with_the_counts() -> None:
    progress = Progress()
    line = progress.apply("verify.run.ingested", {"total": 3, "commit_range": "a..b"})
    assert line is not None
    assert json.loads(stage_json("r1", progress, line)) == {
        "type": "stage",
        "run_id": "r1",
        "stage": "ingested",
        "message": "ingested 3 change(s) from a..b",
        "total": 3,
        "done": 0,
        "failed": 0,
    }


def offline_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = cli_env(ECHELON_API_PORT=str(port), ECHELON_DATA_DIR=str(tmp_path / "data"), **extra)
    env.pop("ANTHROPIC_API_KEY", None)  # the offline scorer unless a test sets a key
    return env


@pytest.fixture
async def api_listener() -> AsyncIterator[tuple[int, list[int]]]:
    """A socket where the CLI would find its API: counts connections, so a test can prove none was made."""
    accepted: list[int] = []

    async def on_connect(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield port, accepted
    finally:
        server.close()
        await server.wait_closed()


async def test_dry_run_on_the_sample_lists_its_changes_and_publishes_nothing(
    tmp_path: Path, api_listener: tuple[int, list[int]]
) -> None:
    port, accepted = api_listener
    env = offline_env(tmp_path, port)
    result = await run_cli("verify", "sample", "--dry-run", "--json", cwd=tmp_path, env=env)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    found = json.loads(lines[0])
    assert found["dry_run"] is True and found["count"] == SAMPLE_CHANGES == len(found["changes"])
    assert found["changes"][0]["title"].endswith("(#8)") and found["changes"][-1]["title"].endswith("(#1)")
    assert all(c["diff_bytes"] > 0 for c in found["changes"])
    assert found["selection_policy"] == "local_git/pr-merges@1"
    assert found["judge"] == "offline" and found["estimated_cost_usd"] == 0
    assert accepted == []  # no API call: nothing submitted
    assert not (tmp_path / "data").exists()  # the sample was cloned into a temporary directory, then removed

    limited = await run_cli("verify", "sample", "--dry-run", "--limit", "3", cwd=tmp_path, env=env)
    assert limited.code == 0, limited.stderr
    assert limited.stdout.splitlines()[0] == "dry run: nothing submitted; 3 change(s) of at most 3 would be ingested"
    assert "offline scorer: no judge cost" in limited.stdout
    assert accepted == []


async def test_dry_run_prices_the_configured_judge(tmp_path: Path, api_listener: tuple[int, list[int]]) -> None:
    port, accepted = api_listener
    env = offline_env(tmp_path, port, ECHELON_ANTHROPIC_API_KEY="sk-test", ECHELON_JUDGE_MODEL="claude-haiku-4-5")
    result = await run_cli("verify", "sample", "--dry-run", "--json", "--limit", "2", cwd=tmp_path, env=env)
    assert result.code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["judge"] == "anthropic:claude-haiku-4-5"
    tokens = sum(c["input_tokens"] for c in found["changes"])
    # Each replay's two prompts carry its diff: at least half its bytes in tokens (chars / 4, twice).
    assert all(c["input_tokens"] > c["diff_bytes"] / 2 for c in found["changes"])
    assert found["input_tokens"] == tokens > 0
    assert found["estimated_cost_usd"] == pytest.approx(tokens * 1.0 / 1e6, abs=1e-6)
    assert found["max_output_cost_usd"] == pytest.approx(2 * (1024 + 4096) * 5.0 / 1e6)
    assert "sk-test" not in result.stdout + result.stderr
    assert accepted == []


async def test_dry_run_of_a_missing_path_is_one_line(tmp_path: Path, api_listener: tuple[int, list[int]]) -> None:
    port, _ = api_listener
    result = await run_cli("verify", str(tmp_path / "nope"), "--dry-run", cwd=tmp_path, env=offline_env(tmp_path, port))
    assert result.code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


async def test_dry_run_of_dot_reads_the_repository_this_shell_stands_in(
    tmp_path: Path, api_listener: tuple[int, list[int]]
) -> None:
    port, accepted = api_listener
    repo = await materialise_sample_repo(tmp_path / "my-project")
    result = await run_cli("verify", ".", "--dry-run", "--json", cwd=repo, env=offline_env(tmp_path, port))
    assert result.code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["count"] == SAMPLE_CHANGES and found["ground_truth_source"] == "local_git"
    assert accepted == []


async def test_rederive_json_prints_only_json_on_stdout(tmp_path: Path) -> None:
    env = cli_env(ECHELON_DATA_DIR=str(tmp_path / "data"))  # embedded servers: their start-up is logged
    result = await run_cli("certificates", "rederive", "cert-NOPE", "--json", cwd=tmp_path, env=env, timeout=120)
    assert result.code == 1 and "cannot rederive" in result.stderr
    assert result.stdout == "", result.stdout


async def test_the_bar_never_steps_back_after_the_stream_showed_the_end(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stream said completed; the read model lags a writer batch (CERTIFYING 8/8): not shown again."""
    import httpx

    from echelon import client as cli_client

    async def streamed_to_the_end(_b: str, _t: str, _r: str, show: object) -> Progress:
        progress = Progress(stage="completed", total=8, ended="completed")
        progress.done.update(str(i) for i in range(8))
        return progress

    views = iter(
        [{"status": "CERTIFYING", "progress": 8, "total": 8}] * 2 + [{"status": "COMPLETED", "progress": 8, "total": 8}]
    )
    transport = httpx.MockTransport(lambda _request: httpx.Response(200, json=next(views)))
    monkeypatch.setattr(cli_client, "follow", streamed_to_the_end)
    monkeypatch.setattr(cli_client.sys.stdout, "isatty", lambda: True)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        view = await cli_client._watch(client, "http://api", "token", "RUN1")
    assert view["status"] == "COMPLETED"
    assert "CERTIFYING" not in capsys.readouterr().out
