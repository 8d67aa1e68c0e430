"""Generated server passwords: kept in a file only its owner can read, never on a command line."""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote

from echelon.embedded._process import EmbeddedServerError


def new_password() -> str:
    # URL-safe: it goes into client URLs and SQL literals without escaping.
    return secrets.token_urlsafe(32)


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
