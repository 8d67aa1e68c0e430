"""The interpreter's recursion limit belongs to the process, not to a library it imports.

CPython's recursion limit also bounds C code that recurses through `Py_EnterRecursiveCall`, such as the
`json` module's C scanner. At the default (1000) a deeply nested document raises RecursionError; at
100,000 (what `py_ecc`, loaded by `eth_account`, sets on import) the same document overflows the C stack
and the whole process dies with SIGSEGV. So imports that change the limit are wrapped in
`recursion_limit_kept()`, and every role process checks the limit at start (`check_recursion_limit`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from echelon_platform.errors import ConfigError

# CPython's default: deep enough for this code base, shallow enough to raise before the C stack runs out.
MAX_RECURSION_LIMIT = 1000


@contextmanager
def recursion_limit_kept() -> Iterator[None]:
    """Run the block (an import, typically) and put the recursion limit back to what it was before."""
    limit = sys.getrecursionlimit()
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def check_recursion_limit(maximum: int = MAX_RECURSION_LIMIT) -> None:
    """ConfigError when something raised the limit above `maximum`: refuse to start rather than serve with
    a limit under which one nested request body can crash every role of the process."""
    limit = sys.getrecursionlimit()
    if limit > maximum:
        raise ConfigError(
            f"the interpreter's recursion limit is {limit} (at most {maximum} is safe): an imported library "
            "raised it, so a deeply nested input could crash the process instead of raising RecursionError; "
            "import that library inside echelon_platform.recursion.recursion_limit_kept()"
        )
