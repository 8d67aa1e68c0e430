"""Generated server passwords: kept in a file only its owner can read, never on a command line."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import quote

from echelon.embedded._process import EmbeddedServerError


def new_password() -> str:
    # URL-safe: it goes into client URLs and SQL literals without escaping.
    return secrets.token_urlsafe(32)


def write_private(path: Path, text: str) -> None:
    """Replace path with text (mode 0600) in one step: a reader sees the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_password(path: Path) -> str | None:
    """The password in path, None when the file does not exist."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EmbeddedServerError(f"cannot read {path}: {exc.strerror}") from exc
    if not text:
        raise EmbeddedServerError(f"{path} is empty: remove it and the server's data to start afresh")
    return text


def userinfo(user: str | None, password: str) -> str:
    """`user:password@` (or `:password@`) for a client URL."""
    return f"{quote(user or '', safe='')}:{quote(password, safe='')}@"
