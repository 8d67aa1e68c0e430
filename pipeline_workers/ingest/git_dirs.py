"""Where a local repository's git data really lives, checked against the allowed roots.

A checked path inside a root does not make the repository's content live there: a `.git` *file*
(`gitdir: /elsewhere/.git`), a worktree of a repository elsewhere (its `commondir`), a symlinked `.git` or
`objects` directory, symlinked object files or packs, and `objects/info/alternates` can all lead git to
read objects from outside. So the ingest worker asks git where the git directory, the common directory
and the object directory are (`git rev-parse --absolute-git-dir --git-common-dir --git-path objects`),
resolves them (realpath), checks each against the roots, follows alternates (as git does, a few levels
deep) and refuses symlinks under the object directory that point out. Every later git call is then pinned
to the checked directories (GIT_DIR, GIT_COMMON_DIR, GIT_OBJECT_DIRECTORY), so a `.git` file rewritten
after the check does not redirect it, and no GIT_* variable of the worker's own environment is inherited
(GIT_DIR, GIT_OBJECT_DIRECTORY, GIT_ALTERNATE_OBJECT_DIRECTORIES or GIT_CONFIG_* would override the
repository).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from echelon_platform.errors import IngestError

# git follows alternates of alternates up to 5 levels (link_alt_odb_entry); one more to refuse a deeper chain.
_MAX_ALTERNATE_DEPTH = 6


@dataclass(frozen=True, slots=True)
class GitDirs:
    """The resolved (realpath) directories git reads a repository from."""

    git_dir: Path
    common_dir: Path
    objects_dir: Path

    def env(self) -> dict[str, str]:
        """Environment pinning later git calls to exactly these directories."""
        return {
            "GIT_DIR": str(self.git_dir),
            "GIT_COMMON_DIR": str(self.common_dir),
            "GIT_OBJECT_DIRECTORY": str(self.objects_dir),
        }


def clean_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment without any GIT_* variable (see the module doc)."""
    return {k: v for k, v in environ.items() if not k.startswith("GIT_")}


def parse_rev_parse(repo: str, output: str) -> GitDirs:
    """`git rev-parse --absolute-git-dir --git-common-dir --git-path objects`, run in `repo`, resolved."""
    lines = output.rstrip("\n").split("\n")
    if len(lines) != 3 or not all(lines):
        raise IngestError(f"cannot tell where the git directory of {repo} is (git rev-parse said {output[:200]!r})")
    git_dir, common_dir, objects_dir = (Path(os.path.realpath(os.path.join(repo, line))) for line in lines)
    return GitDirs(git_dir=git_dir, common_dir=common_dir, objects_dir=objects_dir)


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_confined(repo: str, dirs: GitDirs, roots: Sequence[Path]) -> None:
    """IngestError unless everything git would read for `repo` lies under `roots` (see the module doc)."""
    allowed = [Path(os.path.realpath(r)) for r in roots]
    shown = ", ".join(str(r) for r in allowed) or "(none)"

    def refuse(what: str, where: Path) -> IngestError:
        return IngestError(
            f"local repository {repo} reads its {what} from {where}, outside the allowed roots ({shown}): "
            "a .git file, worktree, symlink or alternates may not lead out of them"
        )

    for what, where in (
        ("git directory", dirs.git_dir),
        ("common git directory", dirs.common_dir),
        ("objects", dirs.objects_dir),
    ):
        if not _inside(where, allowed):
            raise refuse(what, where)
    for store in _object_stores(repo, dirs.objects_dir):
        if not _inside(store, allowed):
            raise refuse("objects (alternates)", store)
        linked = _symlink_out_of(store, allowed)
        if linked is not None:
            raise refuse("objects (a symlink)", linked)


def _object_stores(repo: str, objects_dir: Path) -> list[Path]:
    """The object directory and every alternate reachable from it, resolved."""
    stores = [objects_dir]
    frontier = [(objects_dir, 0)]
    while frontier:
        store, depth = frontier.pop()
        try:
            text = (store / "info" / "alternates").read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise IngestError(f"cannot read the alternates of {repo}: {exc.strerror}") from exc
        for line in text.splitlines():
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if entry.startswith('"') or depth + 1 >= _MAX_ALTERNATE_DEPTH:
                raise IngestError(
                    f"local repository {repo} has alternates this service does not follow: {entry[:200]!r}"
                )
            alternate = Path(os.path.realpath(os.path.join(store, entry)))
            if alternate not in stores:
                stores.append(alternate)
                frontier.append((alternate, depth + 1))
    return stores


def _symlink_out_of(store: Path, roots: Sequence[Path]) -> Path | None:
    """The target of the first symlink under `store` that resolves outside `roots` (None: there is none).
    scandir's d_type answers is_symlink without a stat per entry, so even many loose objects are cheap."""
    pending, seen = [store], {store}
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise IngestError(f"cannot read the object directory {directory}: {exc.strerror}") from exc
        for entry in entries:
            if entry.is_symlink():
                target = Path(os.path.realpath(entry.path))
                if not _inside(target, roots):
                    return target
                if target.is_dir() and target not in seen:  # what it links to may link out in turn
                    seen.add(target)
                    pending.append(target)
            elif entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return None
