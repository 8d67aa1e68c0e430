"""Roles of one data directory start together and generate its keys once: none may read a half-written
key file (real processes, released at the same instant, for many rounds)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RACE = """
import sys, time
from pathlib import Path
from echelon_platform.adapters.secret_store import _generated
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    print(_generated(Path(sys.argv[1])))
except Exception as exc:
    print(f"ERROR {type(exc).__name__}: {exc}")
"""


def test_roles_starting_together_all_read_the_one_generated_key(tmp_path: Path) -> None:
    for round_ in range(6):
        path = tmp_path / f"r{round_}" / "secrets" / "fernet.key"
        start = time.time() + 1.2  # every process imported and spinning by then
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACE, str(path), str(start)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for _ in range(6)
        ]
        keys = {(p.communicate(timeout=60)[0].strip().splitlines() or [""])[-1] for p in procs}  # after any log line
        assert len(keys) == 1 and not next(iter(keys)).startswith("ERROR") and next(iter(keys)), keys
        assert path.read_text().strip() in keys
        assert path.stat().st_mode & 0o777 == 0o600
        assert [p.name for p in path.parent.iterdir()] == ["fernet.key"]  # no temporary file left
