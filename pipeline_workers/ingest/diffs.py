"""Pure helpers over unified diffs: size-bounding for prompts and a small structural parser.

Diffs travel inside event payloads and judge prompts, so they must be bounded; the parser is shared by
the sample oracle and the offline scorer so both read diffs the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_MAX_DIFF_BYTES = 100_000

# Lines that carry information even without context: file headers, hunk headers, changes, metadata.
_CONTEXT_PREFIX = " "
_DEF_RE = re.compile(
    r"^\s*(?:export\s+)?(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?"
    r"(?P<kind>def|class|function|fn|func)\s+(?P<name>[A-Za-z_$][\w$]*)"
)
_GIT_HEADER_RE = re.compile(r"^diff --git a/(?P<old>.+?) b/(?P<new>.+)$")


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def truncate_diff(diff: str, max_bytes: int = DEFAULT_MAX_DIFF_BYTES) -> str:
    """Bound a diff to ``max_bytes`` UTF-8 bytes (marker included), keeping what a reviewer needs.

    First context lines are dropped (headers, hunk headers and +/- lines stay); if that is still too
    long the text is cut at a line boundary. A marker line always says that and how much was cut, so a
    judge or oracle never mistakes a truncated diff for the whole change. Never splits a character.
    """
    original = _nbytes(diff)
    if original <= max_bytes:
        return diff

    kept = [line for line in diff.split("\n") if not _is_context(line)]
    marker = f"... [diff truncated: {original} bytes → {max_bytes} bytes; context lines removed]"
    body = "\n".join(kept)
    if _nbytes(body) + 1 + _nbytes(marker) <= max_bytes:
        return f"{body}\n{marker}" if body else marker

    marker = f"... [diff truncated: {original} bytes → {max_bytes} bytes; context lines removed, later changes omitted]"
    budget = max_bytes - _nbytes(marker) - 1  # the newline that joins body and marker
    out: list[str] = []
    used = 0
    for line in kept:
        cost = _nbytes(line) + 1
        if used + cost > budget:
            break
        out.append(line)
        used += cost
    # When even the marker does not fit there is nothing sensible to keep: return the marker alone.
    return "".join(f"{line}\n" for line in out) + marker


def _is_context(line: str) -> bool:
    # A blank line inside a hunk is a context line whose leading space was stripped by an editor.
    return line.startswith(_CONTEXT_PREFIX) or line in ("", "\r")


@dataclass
class FileDiff:
    """What one file's section of a diff changed."""

    path: str
    old_path: str | None = None
    status: str = "modified"  # added | deleted | renamed | modified | binary
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    added_defs: list[str] = field(default_factory=list)
    removed_defs: list[str] = field(default_factory=list)

    @property
    def churn(self) -> int:
        return len(self.added) + len(self.removed)


def parse_diff(diff: str) -> list[FileDiff]:
    """Split a unified (git) diff into per-file changes, in diff order.

    Tolerant on purpose: diffs come from arbitrary repositories and may be truncated mid-file.
    """
    files: list[FileDiff] = []
    current: FileDiff | None = None
    in_hunk = False  # inside a hunk, "--- x" is a removed "-- x" line, not a file header
    for line in diff.split("\n"):
        header = _GIT_HEADER_RE.match(line)
        if header:
            current = FileDiff(path=header["new"])
            in_hunk = False
            if header["old"] != header["new"]:
                current.old_path = header["old"]
                current.status = "renamed"
            files.append(current)
            continue
        if current is None:
            if line.startswith("--- "):
                # A plain `diff -u` without the git header: start a file at its --- line.
                current = FileDiff(path=_strip_prefix(line[4:]))
                files.append(current)
            continue
        if line.startswith("@@"):
            in_hunk = True
        elif in_hunk and line[:1] in ("+", "-"):
            _apply_change(current, line)
        elif not in_hunk:
            _apply_header(current, line)
    return files


def _apply_change(current: FileDiff, line: str) -> None:
    name = _def_name(line[1:])
    if line.startswith("+"):
        current.added.append(line[1:])
        if name:
            current.added_defs.append(name)
    else:
        current.removed.append(line[1:])
        if name:
            current.removed_defs.append(name)


def _apply_header(current: FileDiff, line: str) -> None:
    if line.startswith("new file mode"):
        current.status = "added"
    elif line.startswith("deleted file mode"):
        current.status = "deleted"
    elif line.startswith("rename from "):
        current.old_path = line[len("rename from ") :]
        current.status = "renamed"
    elif line.startswith("Binary files ") or line == "GIT binary patch":
        current.status = "binary" if current.status == "modified" else current.status
    elif line.startswith("+++ "):
        target = _strip_prefix(line[4:])
        if target != "/dev/null":
            current.path = target


def _strip_prefix(path: str) -> str:
    path = path.split("\t", 1)[0]
    return path[2:] if path.startswith(("a/", "b/")) else path


def _def_name(code: str) -> str | None:
    match = _DEF_RE.match(code)
    return match["name"] if match else None


def changed_lines(files: list[FileDiff]) -> list[tuple[str, str, str]]:
    """Every added/removed line as (path, '+' or '-', text), in diff order per file."""
    out: list[tuple[str, str, str]] = []
    for f in files:
        out.extend((f.path, "-", text) for text in f.removed)
        out.extend((f.path, "+", text) for text in f.added)
    return out
