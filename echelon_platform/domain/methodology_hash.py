"""A methodology version's identity: one SHA-256 over the hashes of its files (pure).

The form is `sha256sum`'s output sorted by file name (`<hex>  <name>\n` per file), hashed again, so anyone
can recompute it with shell tools from the released files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from echelon_platform.errors import RequestRejected

MAX_FILES = 32


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def methodology_hash(files: Mapping[str, str]) -> str:
    """The hash over ``files`` (file name → SHA-256 hex of its bytes)."""
    if not files:
        raise RequestRejected("a methodology needs at least one file")
    listing = "".join(f"{digest}  {name}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def check_file_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith(".") or len(name) > 100:
        raise RequestRejected(f"methodology file name {name[:100]!r} must be a plain file name")
    return name
