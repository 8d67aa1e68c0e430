"""Value types shared by the pipeline stages: ground truth, oracle replies, scores, certificates.

They travel inside event payloads, so every field is JSON-friendly and models are frozen.
"""

from __future__ import annotations

import re
import string
import unicodedata
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Construct ids name an oracle on certificates and the leaderboard, and the first to certify one owns it, so
# two spellings must never be two identities. Accepted: ASCII letters and digits, in runs joined by single
# separators (. : / -), starting and ending with a letter or digit, at most 128 characters; the recorded
# form is lower case. `construct_key` is the one form ids are compared in (ownership, grouping, filters).
CONSTRUCT_ID_MAX_CHARS = 128
CONSTRUCT_ID_SEPARATORS = ".:/-"
_CONSTRUCT_ID = re.compile(r"^[a-z0-9]+(?:[.:/-][a-z0-9]+)*$")
_SEPARATOR_RUN = re.compile(r"[.:/_-]{2,}")


def construct_key(construct_id: str) -> str:
    """The canonical form of a construct id: NFKC, case-folded, without surrounding whitespace or separators,
    doubled separators collapsed. Total (ids logged before the alphabet was restricted have one too); for an
    id `canonical_construct_id` accepts, it is that id."""
    folded = unicodedata.normalize("NFKC", construct_id).casefold()
    folded = folded.strip(string.whitespace + CONSTRUCT_ID_SEPARATORS + "_")
    return _SEPARATOR_RUN.sub(lambda m: m.group(0)[0], folded)


def matches_construct(construct_id: str | None, wanted: str | None) -> bool:
    """A list filter: `construct_id` names the `wanted` construct (compared in `construct_key` form); no
    `wanted` matches every run."""
    return wanted is None or (construct_id is not None and construct_key(construct_id) == construct_key(wanted))


def canonical_construct_id(raw: str) -> str:
    """A requested construct id in its canonical (lower-case) form; ValueError saying why it is refused."""
    lowered = raw.lower()
    if not raw.isascii() or len(raw) > CONSTRUCT_ID_MAX_CHARS or not _CONSTRUCT_ID.match(lowered):
        raise ValueError(
            f"construct_id must be 1-{CONSTRUCT_ID_MAX_CHARS} ASCII letters and digits, with single separators "
            f"({' '.join(CONSTRUCT_ID_SEPARATORS)}) only between them (no leading, trailing or doubled ones); "
            "it is recorded in lower case"
        )
    return lowered


ConstructId = Annotated[str, AfterValidator(canonical_construct_id)]


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
    input_tokens: int = 0  # every input token, cached ones included
    output_tokens: int = 0
    cost_usd: float = 0.0
    # Of the input tokens, those read from / written to the provider's prompt cache (priced differently).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


MAX_JUDGE_TEXT_CHARS = 64_000  # a judge's raw answer kept in the log; longer answers are cut and flagged


class JudgeCall(_Frozen):
    """One request/response round trip with a judge, as logged (`verify.judge.called`).

    The raw text is what the methodology's parser reads, so a certificate can be re-derived from the log
    without asking any judge again. The prompt is not logged (it is the diff and the reply, both already
    in the log, rendered by the methodology's templates); its hash is, so a changed template shows.
    """

    judge: str = Field(description="Judge id, e.g. `anthropic:claude-sonnet-4-6` or `offline-lexical-v1`")
    model: str
    purpose: Literal["question", "score"]
    round_trip: int = Field(ge=1, description="1 for the request, 2 for the repair round trip")
    prompt_sha256: str
    methodology_version: str
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0.0)
    latency_ms: float = Field(default=0.0, ge=0.0)
    cache_read_tokens: int = Field(default=0, ge=0, description="Of input_tokens, read from the prompt cache")
    cache_write_tokens: int = Field(default=0, ge=0, description="Of input_tokens, written to the prompt cache")
    raw_text: str = Field(max_length=MAX_JUDGE_TEXT_CHARS)
    raw_truncated: bool = False
    usable: bool = Field(description="The methodology's parser accepted the raw text")
    # The HTTP attempt this call was (its `verify.judge.started` names the same id), absent for a judge that
    # sends nothing (offline) and on calls logged before attempts were. `status`: the HTTP status answered,
    # None when no answer came (a timeout, a dropped connection: `error` says which).
    attempt_id: str | None = None
    attempt: int = Field(default=1, ge=1, description="HTTP attempt within the round trip (retries count up)")
    status: int | None = None
    error: str | None = None
    # The answer-cache key (methodology hash, model, exact prompt) and, for an answer taken from the log
    # instead of asked again, the call key it was first logged under (such a call costs nothing).
    cache_key: str | None = None
    reused_from: str | None = None


class JudgeAttempt(_Frozen):
    """One HTTP request about to be sent to a judge, logged (`verify.judge.started`) before it is sent: the
    log never shows fewer requests than a provider could bill, even when the process dies mid-call."""

    attempt_id: str
    judge: str
    model: str
    purpose: Literal["question", "score"]
    round_trip: int = Field(ge=1)
    attempt: int = Field(ge=1)
    prompt_sha256: str
    methodology_version: str
    max_cost_usd: float = Field(default=0.0, ge=0.0, description="What the call can cost at most (its bound)")


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
    # Calibration inputs (optional, absent on older scores): the judge's verdict per judged key claim, in
    # the oracle's order, and the oracle's stated confidence per claim when it gave one (see README).
    claim_supported: list[bool] | None = None
    claim_confidences: list[float] | None = None
    # Which repeat of its change this replay was (runs with repeats > 1); left out otherwise, so scores
    # issued before repeats existed hash as they were signed.
    repeat: int | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)


class FailedReplay(_Frozen):
    replay_id: str
    ground_truth_id: str
    stage: Literal["invoke", "score"]
    reason: str


class OracleIdentity(_Frozen):
    """Which oracle a certificate is about: its address and, where one is known, a fingerprint of its version."""

    type: Literal["http", "python"]
    target: str = Field(description="The HTTP URL, or `module:callable` for a Python oracle")
    fingerprint: str | None = Field(
        default=None,
        description="`sha256:<hex>` of the callable's module file (Python), or the version header an HTTP "
        "oracle returned; null when no version is known",
    )


class ReliabilityBin(_Frozen):
    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    supported_rate: float | None


class Calibration(_Frozen):
    """A true calibration measure of the oracle's per-claim confidences against the judge's verdicts."""

    claims: int = Field(description="Judged claims that carried a confidence")
    brier_score: float = Field(description="Mean (confidence − supported)² over those claims; 0 is perfect")
    expected_calibration_error: float = Field(description="Σ bin share × |mean confidence − supported rate|")
    reliability: list[ReliabilityBin] = Field(description="10 equal-width confidence bins, [0, 0.1) … [0.9, 1]")


class CertificateSignature(_Frozen):
    algorithm: Literal["Ed25519"] = "Ed25519"
    key_id: str = Field(description="Fingerprint of the public key; see /.well-known/echelon-keys.json")
    value: str = Field(
        description="Base64url signature over the RFC 8785 form of the certificate without "
        "`content_hash` and `signature`"
    )


def _is_none(value: object) -> bool:
    return value is None


class MetricSpread(_Frozen):
    mean: float
    stdev: float = Field(description="Sample standard deviation over the repeats (n − 1)")
    min: float
    max: float


class RepeatSpread(_Frozen):
    """How stable the oracle is: each figure computed per repeat (over that repeat's scored replays), then
    summarised over the repeats."""

    repeats: int = Field(description="Oracle calls per change")
    scored: list[int] = Field(description="Scored replays in each repeat, in repeat order")
    metrics: dict[str, MetricSpread] = Field(description="figure → its spread over the repeat-wise figures")


class FigureInterval(_Frozen):
    n: int = Field(description="Replays the figure is a mean over (calibration figures: judged claims)")
    low: float = Field(description="2.5th percentile of the bootstrap distribution")
    high: float = Field(description="97.5th percentile of the bootstrap distribution")


class Uncertainty(_Frozen):
    """95% bootstrap intervals over the replays; re-computable from the certificate (see `method`)."""

    method: str
    confidence: float
    resamples: int
    seed: str = Field(description="16 hex digits, SHA-256 of `echelon-bootstrap:<run_id>`")
    precision: FigureInterval
    recall: FigureInterval
    reply_accuracy: FigureInterval
    composite_score: FigureInterval
    brier_score: FigureInterval | None = Field(default=None, description="Of `calibration.brier_score`")
    expected_calibration_error: FigureInterval | None = Field(
        default=None, description="Of `calibration.expected_calibration_error`"
    )
    replays_to_narrow: int | None = Field(
        default=None,
        description="When the composite interval is wider than ±0.1: how many more replays would narrow it to "
        "±0.1 (the half-width shrinks as 1/√n: ⌈n·(half-width/0.1)²⌉ − n)",
    )


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
    brier: float = Field(
        description="Legacy, kept for compatibility: (1 − composite_score) / 2, an affine copy of the composite "
        "and not a Brier score. The real calibration measure is `calibration.brier_score`."
    )
    weights: dict[str, float]
    replay_count: int
    sample_size: int
    ground_truth_source: str
    commit_range: str
    methodology_version: str
    scoring_model: str
    partial: bool = False
    warning: str | None = None
    # Schema 2 (hashed over RFC 8785 and signed) adds these; a schema-1 certificate has none of them.
    oracle: OracleIdentity | None = None
    selection_policy: str | None = Field(default=None, description="How ground-truth changes were chosen")
    calibration: Calibration | None = Field(
        default=None, description="Present when the oracle gave a confidence per key claim"
    )
    # Added later (additive): left out, not null, when unset (certificates issued before them), so those
    # certificates serialise, hash and verify exactly as they were signed.
    methodology_hash: str | None = Field(
        default=None,
        exclude_if=_is_none,
        description="SHA-256 over the methodology's files (prompts, rubric, parsing conventions)",
    )
    mixed_judges: bool | None = Field(
        default=None,
        exclude_if=_is_none,
        description="True when replays of this certificate were scored by different judges",
    )
    repeat_spread: RepeatSpread | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Runs with repeats > 1: each figure's spread over the repeat-wise figures (oracle stability)",
    )
    rescored_from: str | None = Field(
        default=None,
        exclude_if=_is_none,
        description="A rescore: the certificate whose logged oracle replies were scored again (no oracle call)",
    )
    reused_judge_answers: list[str] | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Replays whose judge answers (question or score) were reused from the log, not asked again",
    )
    budget_usd: float | None = Field(
        default=None,
        exclude_if=_is_none,
        description="The run's max_cost_usd when its budget stopped judging (the certificate is partial then)",
    )
    uncertainty: Uncertainty | None = Field(
        default=None,
        exclude_if=_is_none,
        description="n and a 95% bootstrap interval per figure (absent on certificates issued before them)",
    )
    content_hash: str = ""
    signature: CertificateSignature | None = None


class CalibrationCertificate(CertificateFigures):
    certificate_id: str
    timestamp: datetime
    individual_scores: list[ReplayScore]
    failed_replays: list[FailedReplay] = Field(default_factory=list)
