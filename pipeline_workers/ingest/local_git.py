"""Ground truth from a local git repository through the ``git`` CLI (asyncio subprocesses).

Which commits count as "a merged change" is a selection policy (``ECHELON_SELECTION_POLICY``), named on
the certificate:

- ``pr-merges`` (default): pull-request merges only. Walking the mainline (first parents of HEAD), a merge
  whose subject is "Merge pull request #N …" or ends with "(#N)" is a PR merge; a non-merge commit whose
  subject ends with "(#N)" is a squash merge; both are taken. Any other merge ("Merge branch 'stable'") is a
  branch sync: it is not taken, but its second parent's side (``p2 ^p1``, walked the same way) is searched,
  so PR merges reachable only through a sync merge are found. Other direct commits are not taken.
- ``first-parent-merges`` (the original behaviour): every merge on the mainline; with none, every commit.

Either way a record's diff is against its first parent: what the change brought into its branch.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from echelon_platform.domain.repo_refs import LocalRepo, parse_repo_url
from echelon_platform.domain.values import GroundTruthRecord
from echelon_platform.errors import IngestError
from pipeline_workers.ingest.base import IngestResult, SourceSpec, build_result, describe_filters
from pipeline_workers.ingest.diffs import DEFAULT_MAX_DIFF_BYTES, truncate_diff
from pipeline_workers.ingest.git_dirs import check_confined, clean_environment, parse_rev_parse

# Fix the output format whatever the user's git config says; never run external diff/textconv
# programs or fsmonitor hooks a repository's config could name.
_GIT_OPTIONS = (
    "--no-pager",
    "-c",
    "core.quotepath=off",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "color.ui=never",
    "-c",
    "log.showSignature=false",
)
_DIFF_OPTIONS = ("--no-color", "--no-ext-diff", "--no-textconv", "-M", "--src-prefix=a/", "--dst-prefix=b/")
_FIELD, _RECORD = "\x1f", "\x1e"
_LOG_FORMAT = _FIELD.join(["%H", "%h", "%P", "%an", "%cI", "%s", "%b"]) + _RECORD
_PR_MERGE = re.compile(r"^Merge pull request #\d+\b")
_PR_REF = re.compile(r"\(#\d+\)\s*$")
POLICIES = {
    "pr-merges": "local_git/pr-merges@1",
    "first-parent-merges": "local_git/first-parent-merges@1",
}
# pr-merges reads at most this many commits (times the limit, at least _MIN_SCAN) across all the ranges
# it walks, so a repository with few PR merges in a long history cannot make ingest unbounded.
_SCAN_PER_RECORD = 50
_MIN_SCAN = 2000
_BATCH = 8  # changes per diff-tree process (`concurrency` of them at once): bounds its time and memory


def is_pr_change(subject: str, *, merge: bool) -> bool:
    """A PR merge commit ("Merge pull request #N", or "… (#N)"), or a squash commit "… (#N)"."""
    if merge and _PR_MERGE.match(subject):
        return True
    return bool(_PR_REF.search(subject))


class _GitFailed(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


class LocalGitIngester:
    def __init__(
        self,
        *,
        git: str = "git",
        policy: str = "pr-merges",
        timeout_s: float = 60.0,
        concurrency: int = 4,
        max_diff_bytes: int = DEFAULT_MAX_DIFF_BYTES,
        allowed_roots: Sequence[Path] | None = None,
    ) -> None:
        """`allowed_roots`: where the repository's git data must live (see git_dirs.py); None (a local CLI run
        as its user) checks nothing."""
        if policy not in POLICIES:
            raise ValueError(f"unknown selection policy {policy!r}: choose one of {', '.join(POLICIES)}")
        self._git_exe = git
        self._policy = policy
        self._timeout = timeout_s
        self._concurrency = concurrency
        self._max_diff_bytes = max_diff_bytes
        self._roots = None if allowed_roots is None else list(allowed_roots)
        self._pinned: dict[str, dict[str, str]] = {}  # repo → the checked git directories, for every later call

    async def fetch(self, source: SourceSpec) -> IngestResult:
        ref = parse_repo_url(source.repo_url)
        if not isinstance(ref, LocalRepo):
            raise IngestError(f"{source.repo_url!r} is not a local repository path")
        repo = ref.path
        await self._check_repo(repo)
        scan_spent = False
        if self._policy == "pr-merges":
            commits, scan_spent = await self._pr_changes(repo, source)
            if not commits:
                raise IngestError(
                    f"no pull-request merges found in {repo} matching {describe_filters(source)} (selection "
                    "policy pr-merges: 'Merge pull request #N' merges and '(#N)' subjects); for a repository "
                    "without PR references set ECHELON_SELECTION_POLICY=first-parent-merges"
                )
        else:
            commits = await self._log(repo, source, merges=True) or await self._log(repo, source, merges=False)
        records = await self._records(repo, commits)
        filters = f"{describe_filters(source)} policy={self._policy}"
        result = build_result(records, "local_git", repo, filters)
        shortfall = None
        if len(records) < source.limit:
            shortfall = (
                f"stopped at the scan budget of {max(_MIN_SCAN, _SCAN_PER_RECORD * source.limit)} commits"
                if scan_spent
                else f"the history has no more changes matching {filters}"
            )
        return result.model_copy(update={"selection_policy": POLICIES[self._policy], "shortfall": shortfall})

    async def _pr_changes(self, repo: str, source: SourceSpec) -> tuple[list[list[str]], bool]:
        """PR merges and squash merges, newest first, searching sync merges' second parents (see module doc);
        and whether the scan budget ran out with history left to read."""
        budget = max(_MIN_SCAN, _SCAN_PER_RECORD * source.limit)
        ranges: list[tuple[str, ...]] = [("HEAD",)]
        seen_ranges: set[tuple[str, ...]] = set()
        found: dict[str, list[str]] = {}
        while ranges and budget > 0:
            revs = ranges.pop(0)
            if revs in seen_ranges:
                continue
            seen_ranges.add(revs)
            commits = await self._log(repo, source, merges=False, revs=revs, max_count=budget)
            budget -= len(commits)
            for fields in commits:
                parents = fields[2].split()
                merge = len(parents) > 1
                if is_pr_change(fields[5], merge=merge):
                    found.setdefault(fields[0], fields)
                elif merge:
                    ranges.append((parents[1], f"^{parents[0]}"))  # what the sync merge brought in
        newest_first = sorted(found.values(), key=lambda f: (_parse_date(f[4]), f[0]), reverse=True)
        return newest_first[: source.limit], budget <= 0

    async def _check_repo(self, repo: str) -> None:
        """A repository whose git data lies under the allowed roots (checked before anything is read from it)
        and has commits; later calls are pinned to the checked git directories."""
        self._pinned.pop(repo, None)  # a fetch asks git afresh where the data is, then checks it again
        try:
            out = await self._run(repo, "rev-parse", "--absolute-git-dir", "--git-common-dir", "--git-path", "objects")
        except _GitFailed as exc:
            detail = exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else "git rev-parse failed"
            if "cannot change to" in exc.stderr:
                raise IngestError(f"local repository path {repo} does not exist or is not a directory") from exc
            raise IngestError(f"{repo} is not a git repository ({detail})") from exc
        dirs = parse_rev_parse(repo, out)
        if self._roots is not None:
            check_confined(repo, dirs, self._roots)
        self._pinned[repo] = dirs.env()
        try:
            await self._run(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        except _GitFailed as exc:
            raise IngestError(f"git repository {repo} has no commits on its current branch") from exc

    async def _log(
        self,
        repo: str,
        source: SourceSpec,
        *,
        merges: bool,
        revs: tuple[str, ...] = ("HEAD",),
        max_count: int | None = None,
    ) -> list[list[str]]:
        count = source.limit if max_count is None else max_count
        args = ["log", "--first-parent", f"--max-count={count}", f"--format={_LOG_FORMAT}"]
        if merges:
            args.append("--merges")
        if source.since is not None:
            # git's --since is inclusive; flooring to a whole second keeps the boundary commit, and the
            # exact comparison below removes anything git let through from before `since`.
            args.append(f"--since=@{int(source.since.timestamp())}")
        args += [*revs, "--"]
        out = await self._run_or_fail(repo, *args)
        commits: list[list[str]] = []
        for raw in out.split(_RECORD):
            fields = raw.strip("\n").split(_FIELD)
            if len(fields) != 7:
                continue
            if source.since is not None and _parse_date(fields[4]) < source.since:
                continue
            commits.append(fields)
        return commits

    async def _records(self, repo: str, commits: list[list[str]]) -> list[GroundTruthRecord]:
        """Each change's record, its diff against its first parent (a root commit: against the empty tree, so
        its files show up as added). The diffs come from a few `diff-tree --stdin` processes, each for a
        batch of changes, instead of one process per change: spawning git costs this process more CPU
        than reading its output."""
        pairs = [(fields[0], fields[2].split()[0] if fields[2].strip() else None) for fields in commits]
        gate = asyncio.Semaphore(self._concurrency)

        async def batch(pairs: list[tuple[str, str | None]]) -> list[tuple[list[str], str]]:
            async with gate:
                return await self._diffs(repo, pairs)

        batches = [pairs[i : i + _BATCH] for i in range(0, len(pairs), _BATCH)]
        diffs = [d for done in await asyncio.gather(*(batch(b) for b in batches)) for d in done]
        return [self._record(repo, fields, paths, diff) for fields, (paths, diff) in zip(commits, diffs, strict=True)]

    async def _diffs(self, repo: str, pairs: list[tuple[str, str | None]]) -> list[tuple[list[str], str]]:
        """The changed paths and the patch of each (commit, first parent) pair: one git process for the batch
        (`--raw -p -z`: the paths exact whatever the names hold, then the patch). A line `<commit> <parent>`
        diffs the commit against that parent; a root commit alone, with `--root`, against the empty tree."""
        stdin = "".join(f"{sha} {parent}\n" if parent else f"{sha}\n" for sha, parent in pairs).encode()
        out = await self._run_or_fail(
            repo, "diff-tree", "--stdin", "--root", "--always", "-r", *_DIFF_OPTIONS, "--raw", "-p", "-z", stdin=stdin
        )
        diffs = _split_batch(out, [sha for sha, _ in pairs])
        if diffs is None:  # a patch holding NUL bytes could hide where the next one starts: one process each
            diffs = [await self._diff(repo, sha, parent) for sha, parent in pairs]
        # Cut each patch now: a batch's untruncated patches are not all kept until the records are built.
        return [(paths, truncate_diff(patch, self._max_diff_bytes)) for paths, patch in diffs]

    async def _diff(self, repo: str, sha: str, parent: str | None) -> tuple[list[str], str]:
        """One change alone, by the same plumbing command (so no repository diff setting shapes one change's
        patch and not another's)."""
        stdin = (f"{sha} {parent}\n" if parent else f"{sha}\n").encode()
        out = await self._run_or_fail(
            repo, "diff-tree", "--stdin", "--root", "--always", "-r", *_DIFF_OPTIONS, "--raw", "-p", "-z", stdin=stdin
        )
        if not out.startswith(sha + "\0"):
            raise IngestError("git diff-tree printed something unexpected: the change could not be read")
        return _split_raw_and_patch(out[len(sha) + 1 :])

    def _record(self, repo: str, fields: list[str], paths: list[str], diff: str) -> GroundTruthRecord:
        sha, short, _parents, author, date, subject, body = fields
        return GroundTruthRecord(
            id=short,
            title=subject,
            description=body.strip(),
            diff_content=diff,
            files_changed=paths,
            timestamp=_parse_date(date),
            labels=[],
            author=author,
            url=f"{PurePosixPath(repo).as_uri()}#{sha}",
            repo=repo,
            sha=sha,
        )

    async def _run_or_fail(self, repo: str, *args: str, stdin: bytes | None = None) -> str:
        try:
            return await self._run(repo, *args, stdin=stdin)
        except _GitFailed as exc:
            detail = " ".join(exc.stderr.split())[:300]
            raise IngestError(f"git {args[0]} failed in {repo}: {detail}") from exc

    async def _run(self, repo: str, *args: str, stdin: bytes | None = None) -> str:
        env = {
            **clean_environment(os.environ),
            **self._pinned.get(repo, {}),
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_OPTIONAL_LOCKS": "0",
            # The checked directory must itself be the repository: git must not search its parents, which
            # may lie outside the allowed roots (a plain directory inside some other checkout).
            "GIT_CEILING_DIRECTORIES": str(PurePosixPath(repo).parent),
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                self._git_exe,
                "-C",
                repo,
                *_GIT_OPTIONS,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except FileNotFoundError as exc:
            raise IngestError(f"git executable {self._git_exe!r} not found: install git on the worker") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self._timeout)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise IngestError(f"git {args[0]} timed out after {self._timeout:g}s in {repo}") from exc
        if proc.returncode != 0:
            raise _GitFailed(err.decode("utf-8", errors="replace"))
        # Diffs of arbitrary repositories need not be UTF-8; keep them readable rather than failing.
        return out.decode("utf-8", errors="replace")


def _parse_date(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def _split_batch(output: str, shas: list[str]) -> list[tuple[list[str], str]] | None:
    """Each commit's paths and patch from ``diff-tree --stdin --always --raw -p -z``: per input line, in order,
    the commit and a NUL, then what ``diff --raw -p -z`` prints for it. A patch ends where the next commit's
    header begins (after a line break); None when a patch holds a NUL, which would make that ambiguous."""
    diffs: list[tuple[list[str], str]] = []
    at = 0
    for i, sha in enumerate(shas):
        header = sha + "\0"
        if not output.startswith(header, at):
            raise IngestError("git diff-tree printed something unexpected: the batch could not be read")
        at += len(header)
        paths, at = _raw_paths(output, at)
        if i + 1 == len(shas):
            end = len(output)
        elif output.startswith(shas[i + 1] + "\0", at):  # no changes at all
            end = at
        else:
            end = output.find("\n" + shas[i + 1] + "\0", at) + 1
            if end == 0:
                raise IngestError("git diff-tree printed something unexpected: the batch could not be read")
        patch = output[at:end]
        if "\0" in patch:
            return None
        diffs.append((paths, patch))
        at = end
    return diffs


def _split_raw_and_patch(output: str) -> tuple[list[str], str]:
    """The paths and the patch from ``diff --raw -p -z``: raw entries (`:modes shas STATUS`, then one path,
    or two for a rename or copy, each NUL-terminated), an empty field, then the patch as `diff` prints it."""
    paths, at = _raw_paths(output, 0)
    return paths, output[at:]


def _raw_paths(output: str, at: int) -> tuple[list[str], int]:
    """The paths of the raw entries from `at`, and where the patch begins (after the entries' empty field)."""
    paths: list[str] = []
    while output.startswith(":", at):
        end = output.index("\0", at)
        status = output[at:end].rsplit(" ", 1)[-1]
        at = end + 1
        for _ in range(2 if status[:1] in ("R", "C") else 1):
            end = output.index("\0", at)
            path = output[at:end]
            if path not in paths:
                paths.append(path)
            at = end + 1
    if output.startswith("\0", at):  # the end of the raw entries
        at += 1
    return paths, at
