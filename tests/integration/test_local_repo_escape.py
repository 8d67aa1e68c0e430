"""A local repository under an allowed root must not lead git to content outside the roots: not through a
`.git` file, a worktree, a symlinked `.git` or object directory, symlinked packs, alternates, nor a GIT_*
variable in the worker's environment. The run fails (or the request is refused) and nothing from outside
reaches the log."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import ReplayRequested, RunFailed, make_event
from echelon_platform.errors import IngestError
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.handlers.ingest import IngestHandler
from pipeline_workers.ingest import local_git
from pipeline_workers.ingest.base import SourceSpec
from pipeline_workers.ingest.git_dirs import check_confined
from pipeline_workers.ingest.local_git import LocalGitIngester
from pipeline_workers.pipeline import stage_context
from tests.integration.test_api_support import API, app, auth, client, options
from tests.integration.test_local_repo_swap import SECRET_TITLE, git, request_for, secret_repo

__all__ = ["app", "client", "options"]  # fixtures


def git_out(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def borrowing_refs(repo: Path, outside: Path) -> None:
    """An empty repository whose branch names the outside repository's commit (its objects are elsewhere)."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    sha = git_out(outside, "rev-parse", "HEAD").strip()
    (repo / ".git" / "refs" / "heads" / "main").write_text(sha + "\n")


def gitdir_file(root: Path, outside: Path) -> Path:
    repo = root / "borrowed"
    repo.mkdir()
    (repo / ".git").write_text(f"gitdir: {outside / '.git'}\n")
    return repo


def worktree(root: Path, outside: Path) -> Path:
    git(outside, "worktree", "add", "-q", str(root / "wt"))
    return root / "wt"


def symlinked_git_dir(root: Path, outside: Path) -> Path:
    repo = root / "linked"
    repo.mkdir()
    (repo / ".git").symlink_to(outside / ".git")
    return repo


def symlinked_objects(root: Path, outside: Path) -> Path:
    repo = root / "objects-link"
    borrowing_refs(repo, outside)
    shutil.rmtree(repo / ".git" / "objects")
    (repo / ".git" / "objects").symlink_to(outside / ".git" / "objects")
    return repo


def symlinked_pack(root: Path, outside: Path) -> Path:
    git(outside, "gc", "-q")
    repo = root / "pack-link"
    borrowing_refs(repo, outside)
    for pack in (outside / ".git" / "objects" / "pack").iterdir():
        (repo / ".git" / "objects" / "pack" / pack.name).symlink_to(pack)
    return repo


def alternates(root: Path, outside: Path) -> Path:
    repo = root / "alternates"
    borrowing_refs(repo, outside)
    (repo / ".git" / "objects" / "info" / "alternates").write_text(f"{outside / '.git' / 'objects'}\n")
    return repo


ESCAPES: dict[str, Callable[[Path, Path], Path]] = {
    "a .git file": gitdir_file,
    "a worktree": worktree,
    "a symlinked .git": symlinked_git_dir,
    "a symlinked object directory": symlinked_objects,
    "symlinked packs": symlinked_pack,
    "alternates": alternates,
}


async def ingest(settings: Settings, repo_url: str) -> list[Envelope]:
    payload = request_for(repo_url)
    async with Services(settings, name="test-escape") as svc, httpx.AsyncClient() as http:
        return list(await IngestHandler(stage_context(svc, settings, http)).handle(make_event(payload), payload))


@pytest.mark.parametrize("escape", ESCAPES)
async def test_git_data_outside_the_roots_is_not_read(settings: Settings, tmp_path: Path, escape: str) -> None:
    """The bug: a `.git` file (`gitdir: /outside/repo/.git`) passed the allowed-roots check and the run logged
    the outside repository's changes. So did the other ways git can be led out of a root."""
    outside = secret_repo(tmp_path / "outside" / "secret")
    root = tmp_path / "repos"
    root.mkdir()
    repo = ESCAPES[escape](root, outside)
    settings = settings.model_copy(update={"local_repo_roots": [root]})

    events = await ingest(settings, str(repo))

    assert [e.topic.rsplit(".", 2)[-2:] for e in events] == [["run", "failed"]], [e.topic for e in events]
    reason = RunFailed.model_validate(events[0].payload).reason
    assert "outside the allowed roots" in reason and str(repo) in reason, reason
    assert SECRET_TITLE not in orjson.dumps([e.payload for e in events]).decode()


@pytest.mark.parametrize("escape", ESCAPES)
async def test_the_ingester_asks_git_where_the_data_is(tmp_path: Path, escape: str) -> None:
    """The worker's own check (git rev-parse, realpath, alternates, symlinks), without the path check before it."""
    outside = secret_repo(tmp_path / "outside" / "secret")
    root = tmp_path / "repos"
    root.mkdir()
    repo = ESCAPES[escape](root, outside)
    with pytest.raises(IngestError, match="outside the allowed roots") as refused:
        await LocalGitIngester(allowed_roots=[root]).fetch(SourceSpec(repo_url=str(repo)))
    assert SECRET_TITLE not in str(refused.value)


async def test_the_git_environment_of_the_worker_is_not_inherited(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = secret_repo(tmp_path / "outside" / "secret")
    good = await materialise_sample_repo(tmp_path / "repos" / "good")
    monkeypatch.setenv("GIT_DIR", str(outside / ".git"))
    monkeypatch.setenv("GIT_ALTERNATE_OBJECT_DIRECTORIES", str(outside / ".git" / "objects"))
    settings = settings.model_copy(update={"local_repo_roots": [tmp_path / "repos"]})

    events = await ingest(settings, str(good))

    titles = [ReplayRequested.model_validate(e.payload).record.title for e in events if e.topic.endswith("requested")]
    assert titles and SECRET_TITLE not in titles


async def test_a_worktree_of_a_repository_inside_the_roots_is_read(settings: Settings, tmp_path: Path) -> None:
    main = await materialise_sample_repo(tmp_path / "repos" / "main")
    git(main, "worktree", "add", "-q", str(tmp_path / "repos" / "wt"))
    settings = settings.model_copy(update={"local_repo_roots": [tmp_path / "repos"]})

    events = await ingest(settings, str(tmp_path / "repos" / "wt"))

    assert events[-1].topic.endswith("run.ingested"), [e.topic for e in events]
    assert len(events) > 1


async def test_the_api_refuses_a_git_file_leading_out_of_the_roots(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    outside = secret_repo(tmp_path / "outside" / "secret")
    # `settings` (the app's) allows only its data directory, tmp_path itself: the repository sits under it,
    # its git directory does not.
    root = settings.allowed_repo_roots()[0]
    borrowed = root / "repos" / "borrowed"
    borrowed.mkdir(parents=True)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    shutil.copytree(outside / ".git", elsewhere / ".git")
    (borrowed / ".git").write_text(f"gitdir: {elsewhere / '.git'}\n")
    body = {
        "repo_url": str(borrowed),
        "construct_id": "escape",
        "oracle_type": "python",
        "oracle_module": "pipeline_workers.oracles.sample",
        "oracle_callable": "summarise",
    }
    try:
        refused = await client.post(f"{API}/runs", json=body, headers=auth(settings, "mallory"))
    finally:
        shutil.rmtree(elsewhere)
    assert refused.status_code == 422, refused.text
    assert "outside the allowed roots" in refused.json()["detail"] and "git directory" in refused.json()["detail"]


async def test_a_git_file_rewritten_after_the_check_does_not_redirect_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later git calls are pinned to the checked directories (GIT_DIR, GIT_COMMON_DIR, GIT_OBJECT_DIRECTORY)."""
    outside = secret_repo(tmp_path / "outside" / "secret")
    root = tmp_path / "repos"
    good = await materialise_sample_repo(root / "good")
    repo = root / "separate"
    repo.mkdir()
    (repo / ".git").write_text(f"gitdir: {good / '.git'}\n")  # a legitimate .git file, inside the root

    def check_then_swap(*args: object) -> None:
        check_confined(*args)  # type: ignore[arg-type]
        (repo / ".git").write_text(f"gitdir: {outside / '.git'}\n")  # the race, made deterministic

    monkeypatch.setattr(local_git, "check_confined", check_then_swap)
    result = await LocalGitIngester(allowed_roots=[root]).fetch(SourceSpec(repo_url=str(repo)))
    assert result.records and SECRET_TITLE not in [r.title for r in result.records]
