"""Debian's chromium driven by Playwright for Python (no Playwright browser download): where to find it
and how to launch it for tests and scripts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Nothing in a test may call out: no sync, no component updates, no QUIC probes, no first-run pages.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """ECHELON_CHROMIUM, else Debian's /usr/bin/chromium, else `chromium` on the PATH."""
    for candidate in (os.environ.get("ECHELON_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None
