"""Which ingest adapter reads a repository: GitHub's API or a local git repository."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx

from echelon_platform.domain.repo_refs import GitHubRepo, parse_repo_url
from pipeline_workers.ingest.base import Ingester
from pipeline_workers.ingest.github import DEFAULT_MAX_LIST_PAGES, GitHubIngester
from pipeline_workers.ingest.local_git import LocalGitIngester


def ingester_for(
    repo_url: str,
    http_client: httpx.AsyncClient,
    *,
    github_api_url: str = "https://api.github.com",
    policy: str = "pr-merges",
    github_max_pages: int = DEFAULT_MAX_LIST_PAGES,
    local_roots: Sequence[Path] | None = None,
) -> Ingester:
    """The adapter that can read ``repo_url``; raises RequestRejected for anything else."""
    ref = parse_repo_url(repo_url)
    if isinstance(ref, GitHubRepo):
        return GitHubIngester(http_client, base_url=github_api_url, max_list_pages=github_max_pages)
    return LocalGitIngester(policy=policy, allowed_roots=local_roots)
