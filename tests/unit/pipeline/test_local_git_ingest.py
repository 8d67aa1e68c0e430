from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from echelon_platform.domain.repo_refs import validate_repo_url
from echelon_platform.errors import IngestError, RequestRejected
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.ingest.base import SourceSpec
from pipeline_workers.ingest.github import GitHubIngester
from pipeline_workers.ingest.ingester_choice import ingester_for
from pipeline_workers.ingest.local_git import LocalGitIngester

MERGE_TITLES = [
    "Fix slugify keeping underscores (#8)",
    "Add truncate() and export all helpers (#7)",
    "Document slugify usage in the README (#6)",
    "Add logo image for the docs (#5)",
    "Remove deprecated legacy module (#4)",
    "Rename core module to text (#3)",
    "Fix word_count for tabs and repeated spaces (#2)",
    "Add word_count helper (#1)",
]


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def git_bytes(repo: Path, *args: str) -> bytes:
    """`git` for output that need not be text (a patch holding a NUL byte)."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env).stdout


async def test_merge_commits_newest_first(sample_repo: Path) -> None:
    result = await LocalGitIngester().fetch(SourceSpec(repo_url=str(sample_repo), limit=50))
    records = result.records
    assert [r.title for r in records] == MERGE_TITLES  # the direct "Bump version" commit is not a merge
    assert result.ground_truth_source == "local_git"

    shas = git(sample_repo, "log", "--first-parent", "--merges", "--format=%H").split()
    assert [r.sha for r in records] == shas
    assert result.commit_range == f"{shas[-1]}..{shas[0]}"  # oldest..newest
    assert [r.id for r in records] == [s[:7] for s in shas]

    newest = records[0]
    assert newest.timestamp == datetime(2024, 3, 1, 18, tzinfo=UTC)
    assert newest.description == "slugify('a_b') returned 'a_b'; it now returns 'a-b'."
    assert newest.author == "Ada Example"
    assert newest.url == f"{sample_repo.as_uri()}#{newest.sha}"
    assert newest.labels == []
    assert '-    words = re.findall(r"\\w+", text.lower())' in newest.diff_content
    assert '+    words = re.findall(r"[a-z0-9]+", text.lower())' in newest.diff_content


async def test_deleted_binary_and_renamed_files_are_listed(sample_repo: Path) -> None:
    result = await LocalGitIngester().fetch(SourceSpec(repo_url=str(sample_repo)))
    by_title = {r.title: r for r in result.records}

    deleted = by_title["Remove deprecated legacy module (#4)"]
    assert deleted.files_changed == ["textkit/legacy.py"]
    assert "deleted file mode" in deleted.diff_content

    binary = by_title["Add logo image for the docs (#5)"]
    assert binary.files_changed == ["docs/logo.png"]
    assert "Binary files /dev/null and b/docs/logo.png differ" in binary.diff_content

    renamed = by_title["Rename core module to text (#3)"]
    assert {"textkit/core.py", "textkit/text.py", "tests/test_core.py", "tests/test_text.py"} <= set(
        renamed.files_changed
    )
    assert "rename from textkit/core.py" in renamed.diff_content

    added = by_title["Add word_count helper (#1)"]
    assert "+def word_count(text: str) -> int:" in added.diff_content


async def test_limit_and_inclusive_since(sample_repo: Path) -> None:
    newest_three = await LocalGitIngester().fetch(SourceSpec(repo_url=str(sample_repo), limit=3))
    assert [r.title for r in newest_three.records] == MERGE_TITLES[:3]

    since = datetime(2024, 3, 1, 12, tzinfo=UTC)  # exactly the time of merge #5
    recent = await LocalGitIngester().fetch(SourceSpec(repo_url=f"file://{sample_repo}", since=since))
    assert [r.title for r in recent.records] == MERGE_TITLES[:4]
    assert recent.commit_range.startswith(recent.records[-1].sha)


def make_linear_repo(repo: Path) -> None:
    """Two commits, no merges; the first is the root commit."""
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for i, date in enumerate(["2024-02-01T10:00:00+00:00", "2024-02-02T10:00:00+00:00"]):
        (repo / f"mod{i}.py").write_text(f"def feature_{i}():\n    return {i}\n")
        git(repo, "add", "-A")
        subprocess.run(
            ["git", "-C", str(repo), "commit", "-q", "-m", f"Add feature {i}", "-m", f"Body {i}."],
            check=True,
            env={
                **os.environ,
                "GIT_CONFIG_GLOBAL": "/dev/null",
                "GIT_AUTHOR_NAME": "Bo",
                "GIT_AUTHOR_EMAIL": "bo@example.com",
                "GIT_COMMITTER_NAME": "Bo",
                "GIT_COMMITTER_EMAIL": "bo@example.com",
                "GIT_AUTHOR_DATE": date,
                "GIT_COMMITTER_DATE": date,
            },
        )


async def test_repository_without_merges_falls_back_to_commits(tmp_path: Path) -> None:
    repo = tmp_path / "linear"
    await asyncio.to_thread(make_linear_repo, repo)
    with pytest.raises(IngestError, match="no pull-request merges"):  # the default policy takes PRs only
        await LocalGitIngester().fetch(SourceSpec(repo_url=str(repo)))
    result = await LocalGitIngester(policy="first-parent-merges").fetch(SourceSpec(repo_url=str(repo)))
    assert result.selection_policy == "local_git/first-parent-merges@1"
    assert [r.title for r in result.records] == ["Add feature 1", "Add feature 0"]
    root = result.records[-1]
    assert root.files_changed == ["mod0.py"]
    assert "new file mode" in root.diff_content and "+def feature_0():" in root.diff_content
    assert root.description == "Body 0."


async def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="is not a git repository"):
        await LocalGitIngester().fetch(SourceSpec(repo_url=str(tmp_path)))
    with pytest.raises(IngestError, match="does not exist"):
        await LocalGitIngester().fetch(SourceSpec(repo_url=str(tmp_path / "missing")))


async def test_materialise_is_idempotent_and_safe_for_concurrent_callers(tmp_path: Path) -> None:
    dest = tmp_path / "clone"
    first, second = await asyncio.gather(materialise_sample_repo(dest), materialise_sample_repo(dest))
    assert first == second == dest
    assert (dest / "textkit" / "text.py").is_file()
    assert await materialise_sample_repo(dest) == dest
    leftovers = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert leftovers == ["clone"]  # no staging directories left behind
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "file.txt").write_text("x")
    with pytest.raises(IngestError, match="not a git repository"):
        await materialise_sample_repo(tmp_path / "occupied")


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("https://github.com/octo/widgets", "https://github.com/octo/widgets"),
        ("https://github.com/octo/widgets.git", "https://github.com/octo/widgets"),
        ("https://www.github.com/octo/widgets/", "https://github.com/octo/widgets"),
        ("/srv/repos/textkit/", "/srv/repos/textkit"),
        ("file:///srv/repos/text%20kit", "/srv/repos/text kit"),
    ],
)
def test_validate_repo_url_accepts(url: str, canonical: str) -> None:
    assert validate_repo_url(url) == canonical


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "empty"),
        ("https://gitlab.com/octo/widgets", "only https://github.com"),
        ("http://github.com/octo/widgets", "use https://"),
        ("git@github.com:octo/widgets.git", "SSH repository URLs"),
        ("github.com/octo/widgets", "lacks a scheme"),
        ("https://github.com/octo", "must look like"),
        ("https://github.com/octo/widgets/pulls", "must look like"),
        ("https://github.com/-bad-/widgets", "valid <owner>/<repo>"),
        ("relative/path", "unsupported repo_url"),
        ("./data/sample-repo", "is relative: send the repository's absolute path"),
        (".", "is relative"),
        ("file://server/share/repo", "must name a local path"),
    ],
)
def test_validate_repo_url_rejects(url: str, fragment: str) -> None:
    with pytest.raises(RequestRejected) as info:
        validate_repo_url(url)
    assert fragment in str(info.value)


async def test_ingester_for_picks_the_adapter() -> None:
    async with httpx.AsyncClient() as client:
        assert isinstance(ingester_for("https://github.com/octo/widgets", client), GitHubIngester)
        assert isinstance(ingester_for("/srv/repos/textkit", client), LocalGitIngester)
        assert isinstance(ingester_for("file:///srv/repos/textkit", client), LocalGitIngester)
        with pytest.raises(RequestRejected):
            ingester_for("ftp://example.com/repo", client)


async def test_paths_and_patch_are_what_two_separate_diffs_print(sample_repo: Path, tmp_path: Path) -> None:
    """One `diff --raw -p -z` per change stands for `diff` plus `diff --name-status -z` (one git process
    instead of two): the same patch, the same paths, for renames, deletions, binaries and awkward names."""
    odd = tmp_path / "odd"
    odd.mkdir()
    git(odd, "init", "-q", "-b", "main")
    (odd / "plain.txt").write_text("a\nb\n")
    (odd / "tab\there.txt").write_text("x\n")
    git(odd, "add", ".")
    git(odd, "-c", "user.name=A", "-c", "user.email=a@example.com", "commit", "-qm", "one")
    git(odd, "mv", "plain.txt", "spaced name ü.txt")
    (odd / "tab\there.txt").write_text("x\ny\n")
    (odd / "line\nbreak.bin").write_bytes(b"\x00\x01")
    (odd / "run.sh").write_text("echo\n")
    git(odd, "add", ".")
    git(odd, "-c", "user.name=A", "-c", "user.email=a@example.com", "commit", "-qm", "two (#1)")

    ingester = LocalGitIngester()
    checked = 0
    for repo in (sample_repo, odd):
        for record in (await ingester.fetch(SourceSpec(repo_url=str(repo), limit=50))).records:
            base = record.sha + "^" if len(git(repo, "rev-list", "--parents", "-n1", record.sha).split()) > 1 else None
            if base is None:
                continue
            options = ["--no-color", "--no-ext-diff", "--no-textconv", "-M", "--src-prefix=a/", "--dst-prefix=b/"]
            patch = git(repo, "-c", "core.quotepath=off", "diff", *options, base, record.sha, "--")
            names = git(repo, "diff", "--name-status", "-z", "-M", base, record.sha, "--").split("\0")
            paths: list[str] = []
            i = 0
            while i < len(names) and names[i]:
                width = 2 if names[i][:1] in ("R", "C") else 1
                paths += [p for p in names[i + 1 : i + 1 + width] if p not in paths]
                i += 1 + width
            assert record.diff_content == patch
            assert record.files_changed == paths
            checked += 1
    assert checked >= len(MERGE_TITLES) + 1


async def test_batched_diffs_are_each_changes_own_for_roots_empty_changes_and_patches_holding_nul(
    tmp_path: Path,
) -> None:
    """Diffs are read a batch of changes per git process: each record still gets exactly what its own
    `git diff` prints, across batch boundaries, for a root commit (against the empty tree), a change with no
    diff, and a text patch that holds a NUL byte (git calls a file binary only for a NUL in its first 8000
    bytes), where the batch cannot be split safely and each change is read on its own."""
    repo = tmp_path / "many"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit = ["-c", "user.name=A", "-c", "user.email=a@example.com", "commit", "-q"]
    (repo / "root.txt").write_text("first\n")
    git(repo, "add", ".")
    git(repo, *commit, "-m", "Start (#1)")
    for n in range(2, 21):
        (repo / f"m{n % 3}.txt").write_text(f"{n}\n" * n)
        git(repo, "add", ".")
        git(repo, *commit, "-m", f"Change {n} (#{n})")
    git(repo, *commit, "--allow-empty", "-m", "Nothing changed (#21)")
    (repo / "late-nul.txt").write_bytes(b"x" * 9000 + b"\x00tail\n")
    git(repo, "add", ".")
    git(repo, *commit, "-m", "Text with a late NUL (#22)")

    empty_tree = git(repo, "hash-object", "-t", "tree", "/dev/null").strip()
    options = ["--no-color", "--no-ext-diff", "--no-textconv", "-M", "--src-prefix=a/", "--dst-prefix=b/"]
    for limit in (5, 22):  # one batch, then several
        records = (await LocalGitIngester().fetch(SourceSpec(repo_url=str(repo), limit=limit))).records
        assert len(records) == limit
        for record in records:
            parents = git(repo, "rev-list", "--parents", "-n1", record.sha).split()[1:]
            base = parents[0] if parents else empty_tree
            patch = git_bytes(repo, "-c", "core.quotepath=off", "diff", *options, base, record.sha, "--")
            patch = patch.decode("utf-8", errors="replace")
            names = git(repo, "diff", "--name-only", "-z", "-M", base, record.sha, "--").split("\0")
            assert record.diff_content == patch, record.title
            assert record.files_changed == [n for n in names if n], record.title
    by_title = {r.title: r for r in records}
    assert "\0" in by_title["Text with a late NUL (#22)"].diff_content
    assert (
        by_title["Nothing changed (#21)"].diff_content == "" and by_title["Nothing changed (#21)"].files_changed == []
    )
