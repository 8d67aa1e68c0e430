"""Where a running local stack says it serves: `<data_dir>/api.json`, read by the CLI.

`echelon stack up` and `echelon api` write the URL they actually listen on (and their data directory)
once the server accepts connections, and remove the file when they stop cleanly. The CLI uses it when
neither `--api` nor ECHELON_API_BASE_URL is given, so a stack on another port is found without settings.
A file left by a process that died (its pid is gone) is ignored. Stdlib only: the CLI reads it at start.

The same record is also kept per user (`$XDG_STATE_HOME/echelon/stacks/`, default `~/.local/state/...`),
so the CLI run from any directory finds a stack started elsewhere on a non-default port.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

FILE_NAME = "api.json"


def endpoint_file(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def stacks_dir() -> Path:
    """This user's record of running stacks."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "echelon" / "stacks"


def _user_record(data_dir: Path) -> Path:
    return stacks_dir() / f"{hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]}.json"


def _write_atomically(target: Path, text: str) -> None:
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(target)


def write_endpoint(data_dir: Path, url: str) -> Path:
    """Record `url` atomically (a reader never sees half a file), in the data directory and for this user."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = endpoint_file(data_dir)
    record = {"url": url, "data_dir": str(data_dir.resolve()), "pid": os.getpid(), "started": time.time()}
    text = json.dumps(record) + "\n"
    _write_atomically(target, text)
    try:
        stacks_dir().mkdir(parents=True, exist_ok=True)
        _write_atomically(_user_record(data_dir), text)
    except OSError:
        pass  # a read-only home: the data directory's record still serves the CLI run from there
    return target


def _remove_if_mine(path: Path) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def remove_endpoint(data_dir: Path) -> None:
    """Remove the records if they are still this process's (another stack may have taken the directory over)."""
    _remove_if_mine(endpoint_file(data_dir))
    _remove_if_mine(_user_record(data_dir))


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _live_record(path: Path) -> dict[str, object] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("url"), str) or not _alive(record.get("pid")):
        return None
    return record


def read_endpoint(data_dir: Path) -> str | None:
    """The URL a live local stack recorded under `data_dir`, or None."""
    record = _live_record(endpoint_file(data_dir))
    return None if record is None else str(record["url"]).rstrip("/")


def newest_stack() -> str | None:
    """The URL of this user's most recently started live stack, wherever its data directory is, or None."""
    try:
        paths = list(stacks_dir().glob("*.json"))
    except OSError:
        return None
    live = [r for r in map(_live_record, paths) if r is not None]
    if not live:
        return None

    def started(record: dict[str, object]) -> float:
        value = record.get("started")
        return float(value) if isinstance(value, int | float) else 0.0

    return str(max(live, key=started)["url"]).rstrip("/")
