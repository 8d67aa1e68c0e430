"""Which local repositories a loopback dev stack may read, so `echelon verify .` works out of the box.

`echelon stack up` runs the API and the ingest worker as the invoking user. When it
listens only on loopback and the operator set no ECHELON_LOCAL_REPO_ROOTS, it also allows that user's
home directory and the directory it was started in (besides its data directory): the clone a newcomer
stands in. Anything else keeps the allowlist (only the data directory unless configured), so a server
reachable from other hosts never reads arbitrary paths of its disk.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import structlog

from echelon_platform.config import Settings

log = structlog.get_logger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dev_stack_roots(settings: Settings, *, home: Path | None = None, cwd: Path | None = None) -> Settings:
    if settings.local_repo_roots or not is_loopback(settings.api_host):
        return settings
    roots = [settings.data_dir.resolve()]
    for extra in (home or Path.home(), cwd or Path.cwd()):
        extra = extra.resolve()
        # Never the filesystem root (a stack started in `/` would allow every repository on the disk).
        if extra != Path(extra.anchor) and extra not in roots:
            roots.append(extra)
    log.info("stack.local_repo_roots", roots=[str(r) for r in roots], reason="loopback dev stack")
    return settings.model_copy(update={"local_repo_roots": roots})
