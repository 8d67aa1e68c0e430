"""The ingest port: where ground truth comes from, and how a repository URL picks an adapter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from echelon_platform.domain.values import GroundTruthRecord
from echelon_platform.errors import IngestError

GroundTruthSource = Literal["github", "local_git"]


class SourceSpec(BaseModel):
    """What to ingest. The token is kept out of repr and serialisation so it cannot leak into events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repo_url: str
    limit: int = Field(default=50, ge=1, le=1000)
    since: datetime | None = None
    labels: list[str] = Field(default_factory=list)
    include_unmerged: bool = False
    token: str | None = Field(default=None, repr=False, exclude=True)

    @field_validator("since")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A naive datetime is ambiguous; both GitHub and git report UTC-comparable instants.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class IngestResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    records: list[GroundTruthRecord]
    ground_truth_source: GroundTruthSource
    commit_range: str
    selection_policy: str | None = None
    # Why fewer changes than `limit` were found (None when the limit was reached): a short ground truth
    # is recorded on the run and the certificate, never passed off as complete.
    shortfall: str | None = None


class Ingester(Protocol):
    async def fetch(self, source: SourceSpec) -> IngestResult: ...


def build_result(records: list[GroundTruthRecord], source: GroundTruthSource, where: str, filters: str) -> IngestResult:
    """Wrap records; an empty result is an error because a run over nothing cannot be certified."""
    if not records:
        raise IngestError(f"no changes found in {where} matching {filters}: widen 'since', labels or limit")
    return IngestResult(records=records, ground_truth_source=source, commit_range=commit_range(records))


def commit_range(records: list[GroundTruthRecord]) -> str:
    """``first..last`` SHA in chronological order (oldest first), whatever order records are in."""
    dated = sorted((r for r in records if r.sha), key=lambda r: (r.timestamp, r.sha))
    if not dated:
        return ""
    return f"{dated[0].sha}..{dated[-1].sha}"


def describe_filters(source: SourceSpec) -> str:
    parts = [f"limit={source.limit}"]
    if source.since is not None:
        parts.append(f"since={source.since.isoformat()}")
    if source.labels:
        parts.append(f"labels={','.join(source.labels)}")
    if source.include_unmerged:
        parts.append("include_unmerged")
    return " ".join(parts)
