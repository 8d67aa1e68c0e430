"""Value types shared by the pipeline stages: ground truth, oracle replies, scores, certificates.

They travel inside event payloads, so every field is JSON-friendly and models are frozen.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GroundTruthRecord(_Frozen):
    """One merged change (a PR or a merge commit) with its diff."""

    id: str
    title: str
    description: str = ""
    diff_content: str
    files_changed: list[str] = Field(default_factory=list)
    timestamp: datetime
    labels: list[str] = Field(default_factory=list)
    author: str = ""
    url: str = ""
    repo: str
    sha: str = ""  # merge-commit SHA when known; used for commit_range


class OracleReply(_Frozen):
    """What an oracle construct must return for one change."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    summary: str
    key_claims: list[str]
    follow_up_response: str
    metadata: dict[str, object] | None = None


class JudgeUsage(_Frozen):
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class ReplayScore(_Frozen):
    """The judge's verdict on one replay; ratios are recomputed from the counts."""

    replay_id: str
    ground_truth_id: str
    precision: float = Field(ge=0.0, le=1.0)
    recall: float = Field(ge=0.0, le=1.0)
    reply_accuracy: float = Field(ge=0.0, le=1.0)
    claims_total: int = Field(ge=0)
    claims_supported: int = Field(ge=0)
    changes_total: int = Field(ge=0)
    changes_surfaced: int = Field(ge=0)
    scoring_model: str
    scoring_latency_ms: float = Field(ge=0.0)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    scored_at: datetime


class FailedReplay(_Frozen):
    replay_id: str
    ground_truth_id: str
    stage: Literal["invoke", "score"]
    reason: str


class CertificateFigures(_Frozen):
    """What a certificate states, declared once: the stored certificate and the API's view share it."""

    schema_version: int = 1
    run_id: str
    construct_id: str
    domain: str = "community_oracle"
    precision: float
    recall: float
    reply_accuracy: float
    composite_score: float
    brier: float
    weights: dict[str, float]
    replay_count: int
    sample_size: int
    ground_truth_source: str
    commit_range: str
    methodology_version: str
    scoring_model: str
    partial: bool = False
    warning: str | None = None
    content_hash: str = ""


class CalibrationCertificate(CertificateFigures):
    certificate_id: str
    timestamp: datetime
    individual_scores: list[ReplayScore]
    failed_replays: list[FailedReplay] = Field(default_factory=list)
