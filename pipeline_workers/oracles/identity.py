"""Which oracle a run verified, as named on its certificate: the address plus a version fingerprint if known.

Python oracles: `sha256:<hex>` of the callable's module source file, found without importing the module
itself (its parent packages are imported by the finder, as the invoke stage does anyway). HTTP oracles
give no version unless they say so, so only the URL is named (the fingerprint stays null).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from echelon_platform.domain.events import OracleSpec
from echelon_platform.domain.values import OracleIdentity


def oracle_identity(spec: OracleSpec) -> OracleIdentity:
    if spec.type == "http":
        return OracleIdentity(type="http", target=spec.url or "")
    target = f"{spec.module}:{spec.callable}"
    return OracleIdentity(type="python", target=target, fingerprint=module_fingerprint(spec.module or ""))


def module_fingerprint(module: str) -> str | None:
    """sha256 of the module's source file, or None when it cannot be located or read."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = found.origin if found is not None else None
    if not origin or not origin.endswith(".py"):
        return None
    try:
        return "sha256:" + hashlib.sha256(Path(origin).read_bytes()).hexdigest()
    except OSError:
        return None
