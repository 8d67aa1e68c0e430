"""Key files generated once for every role of a data directory, which may all start at the same moment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def publish_once(path: Path, content: bytes) -> bool:
    """Make `path` hold `content` (mode 0600) unless it exists; False when another process was first.

    Written to a private temporary file and hard-linked into place, so no process ever reads the file
    half-written: an exclusive create followed by a write left a moment in which a role starting alongside
    read an empty key and failed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def write_private(path: Path, content: bytes) -> None:
    """Replace `path` with `content` (mode 0600) in one step: a reader sees the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
