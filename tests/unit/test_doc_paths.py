"""Every repository path the README and docs/ name exists, so a moved or renamed module fails CI instead of
leaving a stale pointer for a reader to trip over."""

from __future__ import annotations

import re
import subprocess
from fnmatch import fnmatch
from pathlib import Path

from echelon_platform.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Bare names of these kinds are runtime files (`api.json`, `pg_hba.conf`), not the repository's.
SOURCE_EXTENSIONS = ("py", "md", "sh", "sql", "toml", "js", "css", "html", "lua")
# A token that names a file or folder: no spaces or placeholders, and a slash or a file extension.
CANDIDATE = re.compile(r"^[\w.*-]+(/[\w.*-]+)*/?$")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = out.split()
    folders = {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parents) - 1)}
    return files + sorted(folders)


TRACKED = _tracked()
TOP = {p.split("/", 1)[0] for p in TRACKED}
BASENAMES = {p.rsplit("/", 1)[-1] for p in TRACKED}


def _named_paths(text: str) -> set[str]:
    """Backticked tokens that name a repository path: `dir/file.py`, `dir/`, `pyproject.toml`, `a/*.sql`."""
    found = set()
    for token in re.findall(r"`([^`\n]+)`", text):
        if not CANDIDATE.match(token) or token.startswith("."):
            continue
        if "/" in token:
            if token.split("/", 1)[0] in TOP:  # `local_git/pr-merges@1` and the like are not paths
                found.add(token.rstrip("/"))
        elif token.rsplit(".", 1)[-1] in SOURCE_EXTENSIONS and "." in token and not token.startswith("*"):
            found.add(token)  # a bare file name: some tracked file has it
    return found


def _exists(path: str) -> bool:
    if "/" not in path:
        return any(fnmatch(name, path) for name in BASENAMES)
    if any(ch in path for ch in "*?["):
        return any(fnmatch(p, path) for p in TRACKED)
    return path in TRACKED or (ROOT / path).exists()


def test_the_docs_name_paths_at_all() -> None:
    names = set().union(*(_named_paths(page.read_text()) for page in PAGES))
    assert {"scripts/test.sh", "echelon_platform/config.py", "pyproject.toml"} <= names


def test_every_named_path_exists() -> None:
    stale = [
        f"{page.relative_to(ROOT)}: `{path}`"
        for page in PAGES
        for path in sorted(_named_paths(page.read_text()))
        if not _exists(path)
    ]
    assert not stale, "paths named in the docs that do not exist:\n" + "\n".join(stale)


def test_every_relative_link_resolves() -> None:
    broken = [
        f"{page.relative_to(ROOT)}: ({target})"
        for page in PAGES
        for target, _ in LINK.findall(page.read_text())
        if "://" not in target and not target.startswith("mailto:") and not (page.parent / target).exists()
    ]
    assert not broken, "links in the docs that lead nowhere:\n" + "\n".join(broken)


def _stale_names(text: str, unit: str) -> list[str]:
    """Names (functions, classes, constants) a unit of text puts beside Python files that none of them hold."""
    tokens = re.findall(r"`([^`\n]+)`", text)
    files = [t for t in tokens if t.endswith(".py") and "/" in t and (ROOT / t).exists()]
    source = "".join((ROOT / f).read_text() for f in files)
    missing = []
    for name in tokens:
        if not files or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?", name) or name.endswith((".py", ".js")):
            continue
        if name.startswith("ECHELON_"):  # settings: checked against Settings below
            continue
        if not re.search(rf"\b{re.escape(name.split('.')[-1])}\b", source):
            missing.append(f"{unit}: `{name}` (in none of {files})")
    return missing


def test_the_code_tour_and_the_adrs_name_what_their_files_hold() -> None:
    """Each step of docs/code-tour.md, and each ADR, names functions and classes beside the files that hold
    them: every such name must still occur in one of the Python files named with it."""
    tour = (ROOT / "docs" / "code-tour.md").read_text()
    missing = [m for step in re.split(r"\n(?=- |#)", tour) for m in _stale_names(step, "docs/code-tour.md")]
    for adr in sorted((ROOT / "docs" / "adr").glob("0*.md")):
        missing += _stale_names(adr.read_text(), str(adr.relative_to(ROOT)))
    assert not missing, "the docs name what their files no longer hold:\n" + "\n".join(missing)


def test_every_setting_the_docs_name_exists() -> None:
    """An `ECHELON_*` variable in the docs is a field of Settings, or is read by name somewhere in the code or
    the deployment files (`ECHELON_KNOWN_ISSUERS_FILE`, the tests' servers, compose's role passwords)."""
    settings = {f"ECHELON_{name.upper()}" for name in Settings.model_fields}
    code = "".join(
        (ROOT / f).read_text(errors="replace")
        for f in TRACKED
        if (ROOT / f).is_file() and not f.endswith(".md") and f.rsplit(".", 1)[-1] in ("py", "sh", "yml", "conf")
    )
    unknown = sorted(
        f"{page.relative_to(ROOT)}: {var}"
        for page in PAGES
        for var in set(re.findall(r"ECHELON_[A-Z0-9_]+", page.read_text()))
        if var.rstrip("_") not in settings and var not in code
    )
    assert not unknown, "settings named in the docs that nothing reads:\n" + "\n".join(unknown)


def test_the_readme_stays_short_and_narrow() -> None:
    """The README is the front page (what it is, two commands, a tour, links); details live in docs/."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move details to a docs/ page"
    wide = [f"README.md:{n}: {len(line)} chars" for n, line in enumerate(lines, 1) if len(line) > 110]
    assert not wide, "\n".join(wide)
