"""Where a running local stack says it serves: `<data_dir>/api.json`, read by the CLI.

`echelon stack up` and `echelon api` write the URL they actually listen on (and their data directory)
once the server accepts connections, and remove the file when they stop cleanly. The CLI uses it when
neither `--api` nor ECHELON_API_BASE_URL is given, so a stack on another port is found without settings.
A file left by a process that died (its pid is gone) is ignored. Stdlib only: the CLI reads it at start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FILE_NAME = "api.json"


def endpoint_file(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def write_endpoint(data_dir: Path, url: str) -> Path:
    """Record `url` atomically (a reader never sees half a file)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = endpoint_file(data_dir)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": url, "data_dir": str(data_dir.resolve()), "pid": os.getpid()}) + "\n")
    tmp.replace(target)
    return target


def remove_endpoint(data_dir: Path) -> None:
    """Remove the file if it is still this process's (another stack may have taken the directory over)."""
    target = endpoint_file(data_dir)
    try:
        if json.loads(target.read_text()).get("pid") == os.getpid():
            target.unlink()
    except (OSError, ValueError, AttributeError):
        pass


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


def read_endpoint(data_dir: Path) -> str | None:
    """The URL a live local stack recorded under `data_dir`, or None."""
    try:
        record = json.loads(endpoint_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("url"), str) or not _alive(record.get("pid")):
        return None
    url: str = record["url"]
    return url.rstrip("/")
