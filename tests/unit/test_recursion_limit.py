"""No library changes the interpreter's recursion limit behind the product's back (py_ecc, loaded by
eth_account, sets 100,000 on import; then the C JSON scanner overflows the C stack on a nested body)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from echelon_platform.errors import ConfigError
from echelon_platform.recursion import MAX_RECURSION_LIMIT, check_recursion_limit, recursion_limit_kept
from tests.cli import ROOT, cli_env
from tests.unit.test_api_exposure import dead_port


async def _python(code: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_importing_the_api_keeps_the_recursion_limit() -> None:
    # A fresh interpreter: this test process may have imported eth_account directly already.
    code = "import sys; before = sys.getrecursionlimit(); import api.app; print(before, sys.getrecursionlimit())"
    status, out, err = await _python(code, ROOT, cli_env())
    assert status == 0, err
    before, after = out.split()
    assert int(after) == int(before) <= MAX_RECURSION_LIMIT


def test_the_kept_limit_is_restored_even_when_the_block_raises() -> None:
    limit = sys.getrecursionlimit()
    try:
        with pytest.raises(RuntimeError), recursion_limit_kept():
            sys.setrecursionlimit(100_000)
            raise RuntimeError("an import that failed half-way")
        assert sys.getrecursionlimit() == limit
    finally:
        sys.setrecursionlimit(limit)


def test_a_raised_limit_is_refused_saying_so() -> None:
    limit = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(100_000)
        with pytest.raises(ConfigError, match="recursion limit is 100000"):
            check_recursion_limit()
    finally:
        sys.setrecursionlimit(limit)
    sys.setrecursionlimit(MAX_RECURSION_LIMIT)
    try:
        check_recursion_limit()
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize("command", [["api"], ["stack", "up"], ["coordinator"], ["worker", "score"]])
async def test_a_role_process_refuses_to_start_with_a_raised_limit(tmp_path: Path, command: list[str]) -> None:
    # Servers that do not answer: the refusal must come before anything tries to reach them.
    port = dead_port()
    env = cli_env(
        NATS_URL=f"nats://127.0.0.1:{port}",
        DATABASE_URL=f"postgresql://x@127.0.0.1:{port}/x",
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
    )
    code = f"import sys; sys.setrecursionlimit(100_000); from echelon.cli import main; main({command!r})"
    status, _, err = await _python(code, tmp_path, env)
    assert status == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("echelon: the interpreter's recursion limit is 100000"), err
