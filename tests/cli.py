"""Run the `echelon` command as a separate process, the way a person does (no shared interpreter state)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def cli_env(**overrides: str) -> dict[str, str]:
    """This checkout on the path, none of the caller's ECHELON_* settings, then `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHELON_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(overrides)
    return env


async def run_cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 60) -> Result:
    # An asyncio subprocess: a test may serve the API in this same event loop while the CLI talks to it.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "echelon.cli",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())
