"""The repository argument of `echelon verify` as the server is sent it (submission and dry run alike)."""

from __future__ import annotations

from pathlib import Path

from echelon_platform.errors import EchelonError


def repo_ref(repo: str) -> str:
    """What the server is sent: "sample" and URLs as given; a local path (".", "../x") made absolute,
    since the server does not share this shell's working directory."""
    if repo == "sample" or "://" in repo or repo.startswith("git@"):
        # "sample" is passed as is: each ingest worker materialises the bundled sample under its own data
        # directory, which it may read, whatever this machine's data directory is.
        return repo
    path = Path(repo).expanduser()
    if not path.is_dir():
        raise EchelonError(f"{repo} is not a directory (pass a git repository, a GitHub URL or 'sample')")
    return str(path.resolve())
