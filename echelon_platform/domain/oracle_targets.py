"""Python oracle targets (`module:callable`) and the operator's allowlist. Pure: nothing is imported."""

from __future__ import annotations

import re
from collections.abc import Collection

from echelon_platform.errors import RequestRejected

_DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_IDENT = re.compile(r"^[A-Za-z_]\w*$")


def parse_target(target: str) -> tuple[str, str]:
    """Split ``module:callable``; RequestRejected for anything else."""
    module, sep, name = target.strip().partition(":")
    if not sep or not _DOTTED.match(module) or not _IDENT.match(name):
        raise RequestRejected(f"python oracle target {target!r} must look like 'package.module:callable'")
    return module, name


def check_callable_allowed(target: str, allowlist: Collection[str]) -> None:
    """RequestRejected unless ``target`` (or ``module:*``) is on the allowlist. Never imports anything."""
    module, name = parse_target(target)
    allowed = {entry.strip() for entry in allowlist}
    if f"{module}:{name}" in allowed or f"{module}:*" in allowed:
        return
    raise RequestRejected(
        f"python oracle {module}:{name} is not on the allowlist: add it to ECHELON_ORACLE_ALLOWLIST "
        "(entries are 'module:callable' or 'module:*')"
    )
