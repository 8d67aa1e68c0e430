"""The subset of GitHub REST payloads the ingester reads (extra fields ignored), validated by pydantic."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, TypeAdapter


class GitHubUser(BaseModel):
    model_config = ConfigDict(extra="ignore")
    login: str


class GitHubLabel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str


class PullSummary(BaseModel):
    model_config = ConfigDict(extra="ignore")
    number: int
    title: str
    body: str | None = None
    html_url: str = ""
    user: GitHubUser | None = None  # null for deleted ("ghost") accounts
    labels: list[GitHubLabel] = []
    merged_at: datetime | None = None
    closed_at: datetime | None = None
    updated_at: datetime
    merge_commit_sha: str | None = None


class PullFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    filename: str
    previous_filename: str | None = None
    status: str = "modified"
    patch: str | None = None  # absent for binary files and very large diffs


PULLS = TypeAdapter(list[PullSummary])
PULL_FILES = TypeAdapter(list[PullFile])


def diff_from_files(files: Sequence[PullFile]) -> str:
    """A unified diff rebuilt from per-file patches, for pull requests too large for the diff endpoint."""
    parts: list[str] = []
    for f in files:
        old = f.previous_filename or f.filename
        parts.append(f"diff --git a/{old} b/{f.filename}")
        if f.status == "removed":
            parts.append("deleted file mode 100644")
        elif f.status == "added":
            parts.append("new file mode 100644")
        elif f.previous_filename:
            parts.extend([f"rename from {old}", f"rename to {f.filename}"])
        if f.patch is None:
            parts.append(f"Binary files a/{old} and b/{f.filename} differ")
            continue
        before = "/dev/null" if f.status == "added" else f"a/{old}"
        after = "/dev/null" if f.status == "removed" else f"b/{f.filename}"
        parts.extend([f"--- {before}", f"+++ {after}", f.patch])
    return "\n".join(parts) + "\n"
