"""The pr-merges selection policy on a history that mixes PR merges, squash merges and branch-sync merges."""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline_workers.ingest.base import SourceSpec
from pipeline_workers.ingest.local_git import LocalGitIngester, is_pr_change

_clock = iter(range(1, 100_000))


def git(repo: Path, *args: str) -> str:
    when = datetime(2024, 5, 1, 10, tzinfo=UTC) + timedelta(minutes=next(_clock))
    date = when.isoformat() if args[0] in ("commit", "merge") else None
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Ada",
        "GIT_AUTHOR_EMAIL": "ada@example.com",
        "GIT_COMMITTER_NAME": "Ada",
        "GIT_COMMITTER_EMAIL": "ada@example.com",
    }
    if date:
        env |= {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def change(repo: Path, name: str, subject: str) -> None:
    (repo / name).write_text(f"{subject}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", subject)


def pr_merge(repo: Path, branch: str, subject: str) -> None:
    """A feature branch off the current branch, merged back with --no-ff and ``subject``."""
    base = git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    git(repo, "checkout", "-q", "-b", branch)
    change(repo, f"{branch.replace('/', '_')}.txt", f"work on {branch}")
    git(repo, "checkout", "-q", base)
    git(repo, "merge", "-q", "--no-ff", branch, "-m", subject)


def make_mixed_history(repo: Path) -> None:
    """main: root, PR #1 merge, squash (#2), direct commit, sync merge of stable (which holds PR #3 and #4),
    PR #5 "Merge pull request" merge, and a sync merge "Merge branch 'main' into release" style from release."""
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    change(repo, "README", "Initial commit")
    git(repo, "branch", "stable")
    git(repo, "branch", "release")
    pr_merge(repo, "feature/a", "Add feature A (#1)")
    change(repo, "b.txt", "Add feature B (#2)")  # a squash merge
    change(repo, "direct.txt", "Bump version")  # a direct push
    git(repo, "checkout", "-q", "stable")
    pr_merge(repo, "fix/c", "Merge pull request #3 from ada/fix-c")
    change(repo, "d.txt", "Fix D on stable (#4)")  # squash on stable
    change(repo, "stable-only.txt", "Prepare stable 1.0.1")  # direct on stable
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "stable", "-m", "Merge branch 'stable'")
    pr_merge(repo, "feature/e", "Merge pull request #5 from ada/feature-e")
    git(repo, "checkout", "-q", "release")
    change(repo, "r.txt", "Release notes")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "release", "-m", "Merge remote-tracking branch 'origin/release'")


async def test_pr_merges_policy_takes_pr_and_squash_merges_and_looks_behind_sync_merges(tmp_path: Path) -> None:
    repo = tmp_path / "mixed"
    await asyncio.to_thread(make_mixed_history, repo)
    result = await LocalGitIngester().fetch(SourceSpec(repo_url=str(repo), limit=20))
    assert [r.title for r in result.records] == [
        "Merge pull request #5 from ada/feature-e",
        "Fix D on stable (#4)",  # reachable only through the sync merge's second parent
        "Merge pull request #3 from ada/fix-c",  # likewise
        "Add feature B (#2)",
        "Add feature A (#1)",
    ]
    assert result.selection_policy == "local_git/pr-merges@1"
    by_title = {r.title: r for r in result.records}
    # A merge's diff is against its first parent: only what the PR brought in.
    assert by_title["Merge pull request #3 from ada/fix-c"].files_changed == ["fix_c.txt"]
    assert by_title["Merge pull request #5 from ada/feature-e"].files_changed == ["feature_e.txt"]
    assert by_title["Fix D on stable (#4)"].files_changed == ["d.txt"]

    # The original first-parent policy takes the sync merges, with everything they brought in.
    legacy = await LocalGitIngester(policy="first-parent-merges").fetch(SourceSpec(repo_url=str(repo), limit=20))
    titles = [r.title for r in legacy.records]
    assert "Merge branch 'stable'" in titles and "Fix D on stable (#4)" not in titles
    sync = next(r for r in legacy.records if r.title == "Merge branch 'stable'")
    assert set(sync.files_changed) == {"fix_c.txt", "d.txt", "stable-only.txt"}


async def test_limit_keeps_the_newest_pr_changes(tmp_path: Path) -> None:
    repo = tmp_path / "mixed"
    await asyncio.to_thread(make_mixed_history, repo)
    result = await LocalGitIngester().fetch(SourceSpec(repo_url=str(repo), limit=2))
    assert [r.title for r in result.records] == ["Merge pull request #5 from ada/feature-e", "Fix D on stable (#4)"]
    assert result.shortfall is None


async def test_fewer_pr_changes_than_the_limit_is_a_shortfall(tmp_path: Path) -> None:
    repo = tmp_path / "mixed"
    await asyncio.to_thread(make_mixed_history, repo)
    result = await LocalGitIngester().fetch(SourceSpec(repo_url=str(repo), limit=50))
    assert len(result.records) < 50
    assert result.shortfall == "the history has no more changes matching limit=50 policy=pr-merges"


def test_pr_recognition() -> None:
    assert is_pr_change("Merge pull request #12 from a/b", merge=True)
    assert is_pr_change("Add things (#408)", merge=False)
    assert is_pr_change("Add things (#408)", merge=True)
    assert not is_pr_change("Merge pull request #12 from a/b", merge=False)  # text only, not a merge
    assert not is_pr_change("Merge branch 'stable'", merge=True)
    assert not is_pr_change("Fix (#12) in the middle of a subject", merge=False)
