"""Repository references in a run request: a GitHub repository or an absolute local path. Pure checks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from echelon_platform.errors import RequestRejected

# GitHub's own limits: owners are 1-39 alphanumerics/dashes, repositories 1-100 of [A-Za-z0-9._-].
_OWNER_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_REPO_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_GITHUB_HOSTS = frozenset({"github.com", "www.github.com"})


# The sample repository shipped with the stage workers. The ingest worker materialises it under its own
# data directory, so a client asking for it need not share a filesystem or data directory with the server.
SAMPLE_REPO = "sample"


@dataclass(frozen=True)
class GitHubRepo:
    owner: str
    name: str

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def url(self) -> str:
        return f"https://github.com/{self.full_name}"


@dataclass(frozen=True)
class LocalRepo:
    path: str  # absolute POSIX path


def parse_repo_url(url: str) -> GitHubRepo | LocalRepo:
    """Classify a repository reference without touching the network or the filesystem.

    Local paths must be absolute: the API process and the ingest worker may not share a working
    directory, so a relative path would mean different repositories to each of them.
    """
    raw = url.strip()
    if not raw:
        raise RequestRejected("repo_url is empty: pass https://github.com/<owner>/<repo> or a local path")
    if raw.startswith("git@") or raw.startswith("ssh://"):
        raise RequestRejected(f"SSH repository URLs are not supported ({raw!r}): use https://github.com/<owner>/<repo>")
    if raw.startswith("/"):
        return LocalRepo(path=_normalise_path(raw))
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise RequestRejected(f"file:// URLs must name a local path, not host {parts.netloc!r}")
        return LocalRepo(path=_normalise_path(unquote(parts.path)))
    if scheme in ("http", "https") and (parts.hostname or "").lower() in _GITHUB_HOSTS:
        if scheme != "https":
            raise RequestRejected(f"use https:// for GitHub repositories (got {raw!r})")
        return _parse_github_path(raw, parts.path)
    if not scheme and raw.lower().startswith(("github.com/", "www.github.com/")):
        raise RequestRejected(f"repo_url {raw!r} lacks a scheme: use https://{raw}")
    if not scheme and (raw.startswith(("./", "../", "~")) or raw in (".", "..")):
        # The server does not know the client's working directory: resolving it there would name another path.
        raise RequestRejected(
            f"repo_url {raw!r} is relative: send the repository's absolute path (the CLI resolves it for you)"
        )
    raise RequestRejected(
        f"unsupported repo_url {raw!r}: only https://github.com/<owner>/<repo> and absolute local "
        "paths (or file:// URLs) of git repositories are supported"
    )


def _parse_github_path(raw: str, path: str) -> GitHubRepo:
    segments = [s for s in path.split("/") if s]
    if len(segments) != 2:
        raise RequestRejected(f"GitHub URL {raw!r} must look like https://github.com/<owner>/<repo>")
    owner, name = segments
    name = name.removesuffix(".git")
    if not _OWNER_RE.match(owner) or not _REPO_RE.match(name) or name in (".", ".."):
        raise RequestRejected(f"GitHub URL {raw!r} does not name a valid <owner>/<repo>")
    return GitHubRepo(owner=owner, name=name)


def _normalise_path(path: str) -> str:
    if not path.startswith("/"):
        raise RequestRejected(f"local repository paths must be absolute (got {path!r})")
    if "\x00" in path:
        raise RequestRejected("local repository path contains a NUL byte")
    # Collapse '//' and trailing '/', but keep '..' literal: resolving symlinks is the worker's job.
    return str(PurePosixPath(path))


def validate_repo_url(url: str) -> str:
    """Canonical form of a supported repo URL (request-time check); raises RequestRejected otherwise."""
    ref = parse_repo_url(url)
    return ref.url if isinstance(ref, GitHubRepo) else ref.path


def check_local_repo_allowed(url: str, roots: Sequence[Path]) -> Path | None:
    """Local repositories only under the operator's allowed roots: otherwise any request could read any
    git repository on a worker's disk. Symlinks and `..` are resolved before the check.

    Returns the resolved path that was checked (None for GitHub): read the repository through it, never
    through `url` again, or a symlink swapped after the check would redirect the read."""
    ref = parse_repo_url(url)
    if isinstance(ref, GitHubRepo):
        return None
    resolved = Path(ref.path).resolve()
    allowed = [r.resolve() for r in roots]
    shown = ", ".join(str(r) for r in allowed) or "(none)"
    if not _inside(resolved, allowed):
        raise RequestRejected(
            f"local repository {ref.path} is outside the allowed roots ({shown}); "
            "an operator can add its directory to ECHELON_LOCAL_REPO_ROOTS"
        )
    for what, target in _git_links(resolved):
        if not _inside(target, allowed):
            raise RequestRejected(
                f"local repository {ref.path} keeps its {what} at {target}, outside the allowed roots ({shown}): "
                "a .git file, symlink or worktree may not lead out of them"
            )
    return resolved


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _git_links(repo: Path) -> list[tuple[str, Path]]:
    """Where `repo`'s `.git` leads (a symlink, or a `gitdir:` file) and that directory's `commondir` (a
    worktree's main repository), resolved. A few small reads, so the request is refused (422) before anything
    is published; the ingest worker asks git itself and checks all it reads (pipeline_workers/ingest/git_dirs.py)."""
    dot_git = repo / ".git"
    try:
        if dot_git.is_file() and not dot_git.is_symlink():
            first = dot_git.read_text(encoding="utf-8", errors="replace")[:4096].partition("\n")[0]
            if not first.startswith("gitdir:"):
                return []
            git_dir = (repo / first.removeprefix("gitdir:").strip()).resolve()
        elif dot_git.exists():
            git_dir = dot_git.resolve()
        else:
            git_dir = repo  # a bare repository, or a worktree's git directory itself
        links = [("git directory", git_dir)]
        common = git_dir / "commondir"
        if common.is_file():
            text = common.read_text(encoding="utf-8", errors="replace")[:4096].strip()
            links.append(("common git directory", (git_dir / text).resolve()))
        return links
    except (OSError, ValueError):  # unreadable here: the worker's check decides
        return []
