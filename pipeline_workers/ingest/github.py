"""Ground truth from merged GitHub pull requests (REST v3) through an injected httpx client.

Every retry is bounded: rate-limit waits are capped (and fail with the reset time when longer),
5xx/transport errors back off with jitter for at most ``max_attempts`` tries. The token is sent only
as a header on requests to the configured API origin and is scrubbed from every error message.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import structlog
from pydantic import TypeAdapter, ValidationError

from echelon_platform.domain.repo_refs import GitHubRepo, parse_repo_url
from echelon_platform.domain.values import GroundTruthRecord
from echelon_platform.errors import IngestError
from echelon_platform.retry import backoff_delay
from pipeline_workers.ingest.base import IngestResult, SourceSpec, build_result, describe_filters
from pipeline_workers.ingest.diffs import DEFAULT_MAX_DIFF_BYTES, truncate_diff
from pipeline_workers.ingest.github_payloads import PULL_FILES, PULLS, PullFile, PullSummary, diff_from_files

DEFAULT_API_URL = "https://api.github.com"
GITHUB_POLICY = "github/merged-pull-requests@1"
GITHUB_POLICY_WITH_UNMERGED = "github/closed-pull-requests@1"
_JSON = "application/vnd.github+json"
_DIFF = "application/vnd.github.v3.diff"
_MAX_FILE_PAGES = 30  # GitHub lists at most 3000 files per pull request (30 pages of 100)
# Pages of the closed-PR list read per run (ECHELON_GITHUB_MAX_PAGES). Generous, because recently updated
# unmerged PRs can crowd many pages; a bound all the same, and a run that hits it says so (`shortfall`).
DEFAULT_MAX_LIST_PAGES = 100

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")
log = structlog.stdlib.get_logger(__name__)


class GitHubIngester:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str = DEFAULT_API_URL,
        max_attempts: int = 5,
        max_rate_limit_wait_s: float = 60.0,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 20.0,
        max_list_pages: int = DEFAULT_MAX_LIST_PAGES,
        concurrency: int = 4,
        max_diff_bytes: int = DEFAULT_MAX_DIFF_BYTES,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if max_list_pages < 1:
            raise ValueError("max_list_pages must be at least 1")
        self._client = client
        self._base = base_url.rstrip("/")
        self._origin = _origin(self._base)
        self._max_attempts = max_attempts
        self._max_wait = max_rate_limit_wait_s
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._max_list_pages = max_list_pages
        self._concurrency = concurrency
        self._max_diff_bytes = max_diff_bytes
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    async def fetch(self, source: SourceSpec) -> IngestResult:
        repo = parse_repo_url(source.repo_url)
        if not isinstance(repo, GitHubRepo):
            raise IngestError(f"{source.repo_url!r} is not a GitHub repository URL")
        try:
            pulls, budget_spent = await self._list_pulls(repo, source)
            gate = asyncio.Semaphore(self._concurrency)
            records = await _gather_or_cancel([self._record(repo, pull, source, gate) for pull in pulls])
        except IngestError as exc:
            # Defence in depth: our messages never include the token, but never let one through.
            if source.token and source.token in str(exc):
                raise IngestError(_redact(str(exc), source.token)) from None
            raise
        result = build_result(records, "github", repo.full_name, describe_filters(source))
        # The API says which pull requests were merged: with include_unmerged, closed ones are taken too.
        policy = GITHUB_POLICY_WITH_UNMERGED if source.include_unmerged else GITHUB_POLICY
        shortfall = None
        if len(records) < source.limit:
            shortfall = (
                f"stopped at the page budget of {self._max_list_pages} pages (ECHELON_GITHUB_MAX_PAGES) "
                "with more pull requests listed"
                if budget_spent
                else f"{repo.full_name} has no more pull requests matching {describe_filters(source)}"
            )
        return result.model_copy(update={"selection_policy": policy, "shortfall": shortfall})

    async def _list_pulls(self, repo: GitHubRepo, source: SourceSpec) -> tuple[list[PullSummary], bool]:
        """The newest matching pull requests, and whether the page budget ran out with pages left."""
        url = f"{self._base}/repos/{repo.full_name}/pulls"
        params: dict[str, str] | None = {
            "state": "closed",
            "sort": "updated",
            "direction": "desc",
            "per_page": str(min(100, source.limit)),
        }
        matches: list[PullSummary] = []
        not_found = (
            f"repository {repo.full_name} not found or not visible: check the URL, or pass a github_token with access"
        )
        budget_spent = False
        for page_number in range(1, self._max_list_pages + 1):
            resp = await self._get(url, source.token, what=repo.full_name, params=params, not_found=not_found)
            page = _decode(PULLS, resp, repo.full_name)
            matches.extend(p for p in page if _keep(p, source))
            next_url = _next_link(resp)
            if not page or next_url is None:
                break
            # Pages are ordered by updated_at and merged_at <= updated_at, so once the oldest update on
            # this page is older than what we need, no later page can contribute.
            oldest_update = min(p.updated_at for p in page)
            if source.since is not None and oldest_update < source.since:
                break
            if len(matches) >= source.limit:
                kth_newest = sorted((_when(p) for p in matches), reverse=True)[source.limit - 1]
                if oldest_update <= kth_newest:
                    break
            if page_number == self._max_list_pages:
                budget_spent = True
                log.warning("github.page_budget_spent", repo=repo.full_name, pages=page_number, found=len(matches))
                break
            url, params = self._same_origin(next_url), None
        matches.sort(key=lambda p: (_when(p), p.number), reverse=True)
        return matches[: source.limit], budget_spent

    async def _record(
        self, repo: GitHubRepo, pull: PullSummary, source: SourceSpec, gate: asyncio.Semaphore
    ) -> GroundTruthRecord:
        async with gate:
            what = f"pull request #{pull.number} of {repo.full_name}"
            not_found = f"{what} not found or not visible: pass a github_token with access"
            pr_url = f"{self._base}/repos/{repo.full_name}/pulls/{pull.number}"
            resp = await self._get(
                pr_url, source.token, what=what, accept=_DIFF, not_found=not_found, allow_too_large=True
            )
            files = await self._list_files(f"{pr_url}/files", source.token, what, not_found)
        # GitHub answers 406 when a diff is too large to render; rebuild it from the per-file patches.
        too_large = resp.status_code == 406
        diff = diff_from_files(files) if too_large else resp.content.decode("utf-8", errors="replace")
        changed: list[str] = []
        for f in files:
            for path in (f.previous_filename, f.filename):
                if path and path not in changed:
                    changed.append(path)
        return GroundTruthRecord(
            id=str(pull.number),
            title=pull.title,
            description=pull.body or "",
            diff_content=truncate_diff(diff, self._max_diff_bytes),
            files_changed=changed,
            timestamp=_when(pull),
            labels=[label.name for label in pull.labels],
            author=pull.user.login if pull.user else "ghost",
            url=pull.html_url,
            repo=repo.full_name,
            sha=(pull.merge_commit_sha or "") if pull.merged_at else "",
        )

    async def _list_files(self, url: str, token: str | None, what: str, not_found: str) -> list[PullFile]:
        files: list[PullFile] = []
        params: dict[str, str] | None = {"per_page": "100"}
        for _ in range(_MAX_FILE_PAGES):
            resp = await self._get(url, token, what=f"files of {what}", params=params, not_found=not_found)
            files.extend(_decode(PULL_FILES, resp, what))
            next_url = _next_link(resp)
            if next_url is None:
                break
            url, params = self._same_origin(next_url), None
        return files

    async def _get(
        self,
        url: str,
        token: str | None,
        *,
        what: str,
        not_found: str,
        params: dict[str, str] | None = None,
        accept: str = _JSON,
        allow_too_large: bool = False,
    ) -> httpx.Response:
        """GET with bounded retries; returns a 2xx response (or the 406 when ``allow_too_large``)."""
        headers = {"Accept": accept, "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "echelon-verify"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        last_problem = ""
        for attempt in range(1, self._max_attempts + 1):
            final = attempt == self._max_attempts
            try:
                resp = await self._client.get(url, params=params, headers=headers)
            except httpx.TransportError as exc:
                last_problem = type(exc).__name__
                if final:
                    raise IngestError(
                        f"GitHub API unreachable for {what} after {attempt} attempts ({last_problem})"
                    ) from exc
                await self._backoff(attempt, what, last_problem)
                continue
            status = resp.status_code
            if status < 300:
                return resp
            if status == 406 and allow_too_large:
                return resp
            if status == 401:
                raise IngestError(
                    "GitHub rejected the github_token (401 Unauthorized): it is invalid or expired"
                    if token
                    else "GitHub requires authentication for this request (401): pass a github_token"
                )
            if status == 404:
                raise IngestError(not_found)
            wait = self._rate_limit_wait(resp, what)
            if wait is not None:
                last_problem = f"rate limited (HTTP {status})"
                if final:
                    break
                log.info("github.rate_limited", what=what, wait_s=round(wait, 3), status=status)
                await self._sleep(wait)
                continue
            if status >= 500:
                last_problem = f"HTTP {status}"
                if final:
                    break
                await self._backoff(attempt, what, last_problem)
                continue
            verb = "denied access to" if status == 403 else f"returned HTTP {status} for"
            raise IngestError(f"GitHub {verb} {what} (HTTP {status}): {_message(resp)}")
        raise IngestError(f"GitHub API request for {what} failed after {self._max_attempts} attempts ({last_problem})")

    def _rate_limit_wait(self, resp: httpx.Response, what: str) -> float | None:
        """Seconds to wait before retrying a rate-limited response, or None if it is not one."""
        if resp.status_code not in (403, 429):
            return None
        headers = resp.headers
        retry_after = _float(headers.get("retry-after"))
        if retry_after is not None:  # secondary limit: GitHub says exactly how long
            wait = max(0.0, retry_after)
            resets = self._clock() + wait
        elif headers.get("x-ratelimit-remaining") == "0":
            reset = _float(headers.get("x-ratelimit-reset"))
            resets = reset if reset is not None else self._clock() + 60.0
            wait = max(0.0, resets - self._clock()) + 1.0  # +1 s: the reset second itself, clock skew
        elif resp.status_code == 429 or "rate limit" in _message(resp).lower():
            wait = 60.0  # GitHub's guidance when a secondary limit comes without headers
            resets = self._clock() + wait
        else:
            return None
        if wait > self._max_wait:
            at = datetime.fromtimestamp(resets, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise IngestError(
                f"GitHub API rate limit exceeded while fetching {what}; it resets at {at} "
                f"(in {wait:.0f}s, more than the {self._max_wait:.0f}s this worker waits). "
                "Retry after the reset, or pass a github_token for a higher limit."
            )
        return wait

    async def _backoff(self, attempt: int, what: str, problem: str) -> None:
        delay = backoff_delay(attempt, self._backoff_base, self._backoff_max, self._rng)
        log.info("github.retry", what=what, attempt=attempt, problem=problem, wait_s=round(delay, 3))
        await self._sleep(delay)

    def _same_origin(self, url: str) -> str:
        # The token goes wherever we send requests: never follow a Link header to another host.
        if _origin(url) != self._origin:
            raise IngestError("GitHub pagination link points outside the configured API URL; refusing it")
        return url


def _keep(pull: PullSummary, source: SourceSpec) -> bool:
    if pull.merged_at is None and not source.include_unmerged:
        return False
    when = pull.merged_at or pull.closed_at
    if when is None or (source.since is not None and when < source.since):
        return False
    if source.labels:  # any of the requested labels, case-insensitively
        wanted = {label.casefold() for label in source.labels}
        return any(label.name.casefold() in wanted for label in pull.labels)
    return True


def _when(pull: PullSummary) -> datetime:
    when = pull.merged_at or pull.closed_at or pull.updated_at
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _decode(adapter: TypeAdapter[list[T]], resp: httpx.Response, what: str) -> list[T]:
    try:
        return adapter.validate_json(resp.content)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise IngestError(f"unexpected GitHub response for {what}: {where}: {problem['msg']}") from exc


def _next_link(resp: httpx.Response) -> str | None:
    url = resp.links.get("next", {}).get("url")
    return str(url) if url else None


def _message(resp: httpx.Response) -> str:
    try:
        body: Any = resp.json()
    except ValueError:
        return " ".join(resp.text.split())[:200]
    message = body.get("message") if isinstance(body, dict) else None
    return str(message)[:200] if message else ""


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port)


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


async def _gather_or_cancel(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Like gather, but a failure cancels the siblings instead of leaving them running."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
