"""The `echelon` CLI finds its API from the settings and says what it tried when nothing answers."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from echelon_platform.config import Settings
from tests.cli import cli_env, run_cli

SAMPLE_ORACLE = "pipeline_workers.oracles.sample:summarise"


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


def test_api_url_follows_host_and_port_unless_a_base_url_is_set() -> None:
    assert Settings().api_url() == "http://127.0.0.1:8000"
    assert Settings(api_port=18100).api_url() == "http://127.0.0.1:18100"
    assert Settings(api_host="0.0.0.0", api_port=9).api_url() == "http://127.0.0.1:9"
    assert Settings(api_host="::", api_port=9).api_url() == "http://[::1]:9"
    assert Settings(api_port=18100, api_base_url="https://api.example/").api_url() == "https://api.example"


async def test_verify_without_a_server_names_the_url_it_tried(tmp_path: Path) -> None:
    port = unused_port()
    env = cli_env(ECHELON_API_PORT=str(port))
    result = await run_cli("verify", "sample", "--oracle-callable", SAMPLE_ORACLE, cwd=tmp_path, env=env)
    assert result.code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"http://127.0.0.1:{port}" in lines[0]
    assert "connection refused" in lines[0] and "ECHELON_API_BASE_URL" in lines[0]
    assert result.stdout == ""


async def test_token_prints_one_jwt(tmp_path: Path) -> None:
    result = await run_cli("token", "alice", cwd=tmp_path, env=cli_env())
    assert result.code == 0, result.stderr
    assert result.stdout.count(".") == 2 and len(result.stdout.splitlines()) == 1


def test_replay_still_runs_the_rebuild_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from echelon import commands
    from echelon.cli import main

    seen: list[tuple[str, bool]] = []

    async def fake_rebuild(args: argparse.Namespace, settings: Settings) -> int:
        seen.append((args.command, args.verify))
        return 0

    monkeypatch.setattr(commands, "cmd_rebuild", fake_rebuild)
    monkeypatch.delattr(commands, "cmd_replay", raising=False)
    for name in ("rebuild", "replay"):
        with pytest.raises(SystemExit) as exited:
            main([name, "--verify"])
        assert exited.value.code == 0
    assert seen == [("rebuild", True), ("rebuild", True)]
