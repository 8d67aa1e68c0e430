"""CLI parts that need no server: the stage display, the stdlib token, the endpoint file, which local
repositories a loopback dev stack allows, and how the API URL and a repository argument are resolved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from api.auth import decode_jwt
from echelon.client import api_base, repo_ref
from echelon.devtoken import mint_hs256
from echelon.endpoint import endpoint_file, read_endpoint, remove_endpoint, write_endpoint
from echelon.local_roots import dev_stack_roots, is_loopback
from echelon.watch import Progress, stream_url
from echelon_platform.config import Settings
from echelon_platform.errors import AuthError, EchelonError


def test_each_stage_is_announced_once_and_counts_follow_the_replays() -> None:
    progress = Progress()
    events: list[tuple[str, dict[str, Any]]] = [
        ("verify.run.requested", {}),
        ("verify.run.ingesting", {"source": "sample"}),
        ("verify.run.ingested", {"total": 2, "commit_range": "a..b"}),
        ("verify.replay.invoked", {"replay_id": "r0"}),
        ("verify.replay.invoked", {"replay_id": "r1"}),
        ("verify.replay.scored", {"replay_id": "r0"}),
        ("verify.replay.failed", {"replay_id": "r1", "reason": "timeout"}),
        ("verify.replay.failed", {"replay_id": "r1", "reason": "timeout"}),  # a redelivery counts once
        ("verify.run.certifying", {"total": 2}),
        ("verify.run.completed", {"certificate_id": "c"}),
    ]
    lines = [line for topic, payload in events if (line := progress.apply(topic, payload))]
    assert lines == [
        "ingesting",
        "ingested 2 change(s) from a..b",
        "replaying 2 change(s): oracle, then judge",
        "certifying",
        "completed",
    ]
    assert (len(progress.done), progress.failed) == (2, 1)
    assert progress.bar(width=4) == "[####]       2/2 completed (1 failed)"
    failed = Progress()
    assert failed.apply("verify.run.failed", {"reason": "no merged changes", "stage": "ingest"}) == (
        "failed: no merged changes"
    )


def test_stream_url_follows_the_api_scheme() -> None:
    assert stream_url("http://127.0.0.1:8000/") == "ws://127.0.0.1:8000/api/v1/stream"
    assert stream_url("https://api.example/base") == "wss://api.example/base/api/v1/stream"


def test_stdlib_token_is_accepted_by_the_api() -> None:
    secret = "a-secret-of-at-least-thirty-two-bytes!"
    principal = decode_jwt(mint_hs256("alice", secret, admin=True), secret)
    assert principal.user_id == "alice" and principal.is_admin
    with pytest.raises(AuthError):
        decode_jwt(mint_hs256("alice", "another-secret-of-at-least-32-bytes"), secret)


def test_echelon_token_refuses_a_wallet_user_id() -> None:
    # A `wallet:` user id is a wallet that signed in; minting one would hand out that wallet's identity.
    wallet = "wallet:0x5B38Da6a701c568545dCfcB03FcB875f56beddC4"
    result = subprocess.run(
        [sys.executable, "-m", "echelon.cli", "token", wallet],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=False,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "echelon token: user ids starting with 'wallet:' are reserved for wallet sign-in "
        "(POST /api/v1/auth/session); choose another user id"
    ]


def test_endpoint_file_is_written_read_and_removed(tmp_path: Path) -> None:
    assert read_endpoint(tmp_path) is None
    write_endpoint(tmp_path / "data", "http://127.0.0.1:18100/")
    assert read_endpoint(tmp_path / "data") == "http://127.0.0.1:18100"
    remove_endpoint(tmp_path / "data")
    assert not endpoint_file(tmp_path / "data").exists()


def test_endpoint_of_a_dead_process_is_ignored(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])  # a pid that has certainly exited (and been reaped)
    proc.wait()
    endpoint_file(tmp_path).write_text(f'{{"url": "http://127.0.0.1:1", "pid": {proc.pid}}}')
    assert read_endpoint(tmp_path) is None
    endpoint_file(tmp_path).write_text("{not json")
    assert read_endpoint(tmp_path) is None


def test_api_base_precedence(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_port=18101)
    assert api_base(None, settings) == "http://127.0.0.1:18101"  # nothing recorded
    write_endpoint(tmp_path, "http://127.0.0.1:18102")
    assert api_base(None, settings) == "http://127.0.0.1:18102"  # the live stack's record
    assert api_base(None, settings.model_copy(update={"api_base_url": "https://x.example"})) == "https://x.example"
    assert api_base("http://h:1/", settings) == "http://h:1"


def test_a_stack_started_elsewhere_is_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in ("ECHELON_API_PORT", "ECHELON_API_HOST", "ECHELON_API_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    here = Settings(data_dir=tmp_path / "somewhere-else")
    assert api_base(None, here) == here.api_url()  # no stack running
    write_endpoint(tmp_path / "project-a" / ".echelon", "http://127.0.0.1:18201")
    assert api_base(None, here) == "http://127.0.0.1:18201"  # the user's record names it
    write_endpoint(tmp_path / "project-b" / ".echelon", "http://127.0.0.1:18202")
    assert api_base(None, here) == "http://127.0.0.1:18202"  # the newest of several
    # A port given explicitly wins over the record; a stopped stack leaves no record behind.
    assert api_base(None, Settings(data_dir=tmp_path / "x", api_port=18300)) == "http://127.0.0.1:18300"
    remove_endpoint(tmp_path / "project-b" / ".echelon")
    assert api_base(None, here) == "http://127.0.0.1:18201"


def test_a_local_path_is_sent_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert repo_ref(".") == str(tmp_path.resolve())
    assert repo_ref("sample") == "sample"
    assert repo_ref("https://github.com/acme/widgets") == "https://github.com/acme/widgets"
    with pytest.raises(EchelonError, match="not a directory"):
        repo_ref("missing")


def test_loopback_dev_stack_allows_home_and_start_directory(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "clone"
    base = Settings(data_dir=tmp_path / "data")
    roots = dev_stack_roots(base, home=home, cwd=cwd).allowed_repo_roots()
    assert roots == [(tmp_path / "data").resolve(), home.resolve(), cwd.resolve()]
    assert dev_stack_roots(base, home=Path("/"), cwd=Path("/")).allowed_repo_roots() == [(tmp_path / "data").resolve()]
    # Reachable from other hosts, or configured by the operator: the allowlist stays as it is.
    public = base.model_copy(update={"api_host": "0.0.0.0"})
    assert dev_stack_roots(public, home=home, cwd=cwd) is public
    configured = base.model_copy(update={"local_repo_roots": [tmp_path / "repos"]})
    assert dev_stack_roots(configured, home=home, cwd=cwd) is configured
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("192.168.1.2")


def test_quiet_commands_do_not_load_the_heavy_libraries(tmp_path: Path) -> None:
    """`--help` loads neither pydantic nor the settings; `token` neither PyJWT nor cryptography."""
    code = (
        "import sys, contextlib, io\n"
        "from echelon import cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): cli.main(sys.argv[1:])\n"
        "print(sorted(m for m in ('pydantic', 'jwt', 'cryptography', 'httpx') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHELON_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])

    def loaded(*args: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=tmp_path, check=False
        )
        return run.stdout.strip().splitlines()[-1]

    assert loaded("--help") == "[]"
    assert loaded("token", "alice") == "['pydantic']"
