"""Passwords out of URLs before they are shown: logs, reprs and error messages."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def redact_url(url: str | None) -> str | None:
    """url with any password replaced by `***` (several comma-separated servers each masked)."""
    if url is None or "@" not in url:
        return url
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return MASK  # unparseable but holds an '@': show nothing rather than a secret
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
