"""Response models of the public certificate, rating and stats routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from echelon_platform.domain.values import CalibrationCertificate, CertificateFigures

CertSort = Literal["created_desc", "brier_asc", "composite_desc"]
GroupBy = Literal["construct_id", "scoring_model"]


class ReplayScoreView(BaseModel):
    id: str = Field(description="The replay id")
    ground_truth_id: str
    precision: float
    recall: float
    reply_accuracy: float
    claims_total: int
    claims_supported: int
    changes_total: int
    changes_surfaced: int
    scoring_model: str
    scoring_latency_ms: float
    scored_at: datetime
    claim_supported: list[bool] | None = None
    claim_confidences: list[float] | None = None
    repeat: int | None = Field(default=None, description="Which repeat of its change (runs with repeats > 1)")


class FailedReplayView(BaseModel):
    replay_id: str
    ground_truth_id: str
    stage: str
    reason: str


class CertificateSummary(BaseModel):
    id: str
    run_id: str
    construct_id: str
    domain: str
    replay_count: int
    composite_score: float
    brier: float = Field(description="Legacy: (1 − composite_score) / 2, not a calibration measure")
    scoring_model: str
    partial: bool
    created_at: datetime

    @classmethod
    def of(cls, cert: dict[str, Any]) -> CertificateSummary:
        return cls(
            id=cert["certificate_id"],
            run_id=cert["run_id"],
            construct_id=cert["construct_id"],
            domain=cert.get("domain", "community_oracle"),
            replay_count=cert["replay_count"],
            composite_score=cert["composite_score"],
            brier=cert["brier"],
            scoring_model=cert["scoring_model"],
            partial=bool(cert.get("partial", False)),
            created_at=cert["timestamp"],
        )


class CertificateView(CertificateFigures):
    id: str
    created_at: datetime
    replay_scores: list[ReplayScoreView]
    failed_replays: list[FailedReplayView]
    content_hash: str = Field(description="SHA-256 of the canonical (RFC 8785) certificate; see /verify")

    @classmethod
    def of(cls, cert: CalibrationCertificate) -> CertificateView:
        data = cert.model_dump(exclude={"certificate_id", "timestamp", "individual_scores", "failed_replays"})
        return cls(
            **data,
            id=cert.certificate_id,
            created_at=cert.timestamp,
            replay_scores=[
                ReplayScoreView(id=s.replay_id, **s.model_dump(exclude={"replay_id"})) for s in cert.individual_scores
            ],
            failed_replays=[FailedReplayView(**f.model_dump()) for f in cert.failed_replays],
        )


class CertificateList(BaseModel):
    certificates: list[CertificateSummary]
    total: int
    limit: int
    offset: int


class VerifyResult(BaseModel):
    certificate_id: str
    content_hash: str = Field(description="The hash stored in the certificate")
    hash_ok: bool = Field(description="Recomputing the hash over the stored certificate gives the stored hash")
    aggregates_ok: bool = Field(description="The stored aggregates follow from the stored replay scores")
    signature_ok: bool = Field(
        description="Signed with Ed25519 by a key published at /.well-known/echelon-keys.json over the "
        "RFC 8785 form; false for unsigned (schema 1) certificates"
    )
    key_id: str | None = Field(description="The signing key's id, if the certificate is signed")
    valid: bool = Field(description="All three checks passed")


class KeyEndorsement(BaseModel):
    endorsed_by: str = Field(description="Id of the trusted key that vouches for this one")
    signature: str = Field(
        description="Ed25519 by `endorsed_by` over `echelon signing key endorsement v1\\n` + key_id, base64url"
    )


class PublicKeyView(BaseModel):
    key_id: str = Field(description="SHA-256 (hex) of the raw public key")
    algorithm: Literal["Ed25519"]
    public_key: str = Field(description="The raw 32-byte public key, base64url without padding")
    not_before: datetime
    retired: bool = Field(description="No longer signs new certificates; kept so older ones verify")
    endorsements: list[KeyEndorsement] = Field(
        default_factory=list, description="How this key chains to the issuer's root key (empty: the root)"
    )


class PublicKeys(BaseModel):
    keys: list[PublicKeyView]


class RatingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: int = Field(ge=1, le=5, strict=True, description="1 (the judge is badly wrong) … 5 (spot on)")


class RatingView(BaseModel):
    certificate_id: str
    replay_id: str
    user_id: str
    rating: int
    rated_at: datetime


class RatingAccepted(RatingView):
    rating_id: str


class RatingList(BaseModel):
    ratings: list[RatingView]
    total: int
    limit: int
    offset: int


class HumanAgreement(BaseModel):
    scoring_model: str = Field(description="the judge that scored the rated replays (ReplayScore.scoring_model)")
    methodology_version: str
    ratings: int
    spearman: float | None = Field(description="Spearman's ρ (ties: average ranks); null when undefined")
    within_one: float | None = Field(description="share of ratings within one step of round(1 + 4·composite)")


class StatsRow(BaseModel):
    key: str | None = Field(description="construct id or scoring model; null: runs without a certificate")
    runs: int
    completed: int
    failed: int
    certificates: int
    mean_composite: float | None
    best_brier: float | None
    scored_replays: int
    mean_scoring_latency_ms: float | None
    input_tokens: int
    output_tokens: int
    total_tokens: int
    total_cost_usd: float
    human_ratings: int = Field(description="People's ratings of this group's replays (latest per person)")
    human_judge_mae: float | None = Field(
        description="Mean |(rating − 1) / 4 − judge composite of the replay|; 0 = people agree with the judge"
    )
    human_spearman: float | None = Field(
        default=None, description="Spearman's ρ between ratings and the judge's composites (ties: average ranks)"
    )
    human_within_one: float | None = Field(
        default=None, description="Share of ratings within one step of the judge's composite on 1–5 (1 + 4·c)"
    )
    human_agreement: list[HumanAgreement] = Field(
        default_factory=list, description="The same agreement per judge and methodology version"
    )


class StatsResponse(BaseModel):
    group_by: GroupBy
    rows: list[StatsRow]
    total: int
    limit: int
    offset: int
