"""A bundled, deterministic sample oracle: a baseline construct that only reads the diff.

It is what `ECHELON_ORACLE_ALLOWLIST` allows by default, so a fresh install can run an end-to-end
verification without any external service. No I/O, no randomness: same request, same reply.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline_workers.ingest.diffs import FileDiff, changed_lines, parse_diff

_WORD = re.compile(r"[a-z0-9_]{3,}")
_DEF_LINE = re.compile(r"^\s*(?:async\s+)?(?:def|class|function)\s")
_TEST_PATH = re.compile(r"(^|/)(tests?/|test_)")
_QUESTION_STOPWORDS = frozenset(
    {"what", "does", "the", "this", "that", "change", "changes", "why", "how", "which", "and", "for", "with"}
)
_MAX_CLAIMS = 12


def summarise(request: dict[str, Any]) -> dict[str, Any]:
    """Summary, claims and a follow-up answer derived from the request's diff alone."""
    pr = request.get("pr") or {}
    title = str(pr.get("title") or "").strip()
    files = parse_diff(str(pr.get("diff_content") or ""))
    paths = [str(p) for p in pr.get("files_changed") or []] or [f.path for f in files]
    added = sum(len(f.added) for f in files)
    removed = sum(len(f.removed) for f in files)

    shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    summary = f"{title.rstrip('.')}. " if title else ""
    summary += f"Changes {len(paths)} file{'s' if len(paths) != 1 else ''}"
    summary += f" ({shown})" if shown else ""
    summary += f", adding {added} and removing {removed} lines."

    claims: list[str] = []
    for f in files:
        claims.extend(_file_claims(f))
    claims = claims[: _MAX_CLAIMS - 1]
    claims.append(f"Adds {added} lines and removes {removed} lines")
    return {
        "summary": summary,
        "key_claims": claims,
        "follow_up_response": _answer(str(request.get("follow_up_question") or ""), files, paths),
        "metadata": {"oracle": "sample", "version": 1},
    }


def broken(request: dict[str, Any]) -> dict[str, Any]:
    """An oracle that always fails, for exercising failed-replay handling."""
    raise RuntimeError("the 'broken' sample oracle always fails")


def _file_claims(f: FileDiff) -> list[str]:
    if f.status == "added":
        claims = [f"Adds file {f.path}"]
    elif f.status == "deleted":
        claims = [f"Deletes file {f.path}"]
    elif f.status == "renamed":
        claims = [f"Renames {f.old_path} to {f.path}"]
    elif f.status == "binary":
        claims = [f"Modifies binary file {f.path}"]
    else:
        claims = [f"Modifies {f.path}"]
    added, removed = set(f.added_defs), set(f.removed_defs)
    claims += [f"Adds function {name} in {f.path}" for name in f.added_defs if name not in removed]
    claims += [f"Changes function {name} in {f.path}" for name in f.added_defs if name in removed]
    if f.status != "deleted":
        claims += [f"Removes function {name} from {f.path}" for name in f.removed_defs if name not in added]
    return claims


def _answer(question: str, files: list[FileDiff], paths: list[str]) -> str:
    wanted = set(_WORD.findall(question.lower())) - _QUESTION_STOPWORDS
    best: tuple[tuple[int, bool, bool], str, str, str] | None = None
    for path, sign, text in changed_lines(files):
        if not text.strip():
            continue
        overlap = len(wanted & set(_WORD.findall(f"{path} {text}".lower())))
        # Ties go to definitions, then to non-test code: they explain more than a test's import line.
        rank = (overlap, _DEF_LINE.match(text) is not None, not _TEST_PATH.search(path))
        if overlap and (best is None or rank > best[0]):
            best = (rank, path, sign, text.strip())
    if best is None:
        where = ", ".join(paths[:3]) or "no files"
        return f"The diff does not address that directly; it changes {where}."
    _, path, sign, text = best
    verb = "adds" if sign == "+" else "removes"
    return f"In {path}, the change {verb} the line `{text}`."
