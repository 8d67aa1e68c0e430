"""Every topic, its payload model, schema version and natural (dedup) key.

Subjects are `<root>.<aggregate>.<event>.<run_id>` with root `verify` in production, so `verify.>` is
everything and `verify.*.*.<run_id>` is one run. The dedup key is `<topic>:<natural key>`: a stage that
re-does work after a redelivery publishes a new event id but the same dedup key, so the event is stored once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from echelon_platform.domain.envelope import Envelope, correlation_for, new_event_id, utcnow
from echelon_platform.domain.partitions import Partitioning
from echelon_platform.domain.values import (
    CalibrationCertificate,
    GroundTruthRecord,
    JudgeAttempt,
    JudgeCall,
    OracleReply,
    ReplayScore,
)
from echelon_platform.errors import EnvelopeError


class Payload(BaseModel):
    """An event's payload. Each subclass names its topic, schema version, dedup-key field and a one-line doc;
    `TOPICS` below is built from them, so code names a topic as `RunRequested.TOPIC`, never as a string."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TOPIC: ClassVar[str]
    VERSION: ClassVar[int] = 1
    KEY_FIELD: ClassVar[str] = "run_id"  # payload field that makes the dedup key
    DOC: ClassVar[str]

    run_id: str


class OracleSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["http", "python"]
    url: str | None = None
    module: str | None = None
    callable: str | None = None
    timeout_s: float = 30.0
    header_names: list[str] = Field(default_factory=list)  # names only; values live in the secret store


MAX_REPEATS = 10  # oracle calls per change in one run (oracle stability); the fan-out stays bounded


class RescoreSpec(BaseModel):
    """A run that scores the oracle replies another run logged, without calling the oracle again."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source_run_id: str = Field(description="The run whose logged replies are scored again")
    source_certificate_id: str = Field(description="That run's certificate, which the new one links to")
    methodology_version: str = Field(pattern=r"^v[0-9]+(\.[0-9]+)*$")
    judge: str | None = Field(default=None, description="`offline` or `anthropic:<model>`; None: the stage's judges")
    requested_by: str


class RunRequested(Payload):
    TOPIC = "verify.run.requested"
    DOC = "A client asked for a verification run."

    user_id: str
    construct_id: str
    repo_url: str
    oracle: OracleSpec
    limit: int
    min_replays: int
    weights: dict[str, float]
    since: datetime | None = None
    labels: list[str] = Field(default_factory=list)
    include_unmerged: bool = False
    # Judge spending: a ceiling in USD (None: none), and whether answers the log holds may be reused.
    max_cost_usd: float | None = Field(default=None, gt=0)
    judge_cache: bool = True
    secret_ref: str | None = None
    created_at: AwareDatetime
    # What made the request (secrets excluded), so a repeated Idempotency-Key with another body is refused.
    request_fingerprint: str | None = None
    repeats: int = Field(default=1, ge=1, le=MAX_REPEATS, description="Oracle calls per change")
    rescore: RescoreSpec | None = None


class RunIngesting(Payload):
    TOPIC = "verify.run.ingesting"
    DOC = "Ingest started fetching ground truth."

    source: str


class RunIngested(Payload):
    TOPIC = "verify.run.ingested"
    DOC = "Ground truth fetched; `total` replays follow."

    total: int = Field(ge=0)
    ground_truth_source: str
    commit_range: str
    selection_policy: str | None = None  # how the changes were chosen; named on the certificate
    # The `limit` asked for, and why fewer were found (`total` < `requested`); None in older events.
    requested: int | None = None
    shortfall: str | None = None
    # `total` counts replays: `changes` × `repeats` (None in older events: one replay per change).
    repeats: int | None = Field(default=None, ge=1)


class JudgeTerms(BaseModel):
    """What the run's request says of paying the judge, carried with each replay so no stage reads it back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_cost_usd: float | None = Field(default=None, gt=0)
    cache: bool = True


class ReplayRequested(Payload):
    TOPIC = "verify.replay.requested"
    KEY_FIELD = "replay_id"
    DOC = "One change to replay."

    replay_id: str
    index: int
    record: GroundTruthRecord
    repeat: int | None = Field(default=None, ge=0, description="Which repeat of the change (runs with repeats > 1)")
    # A rescore's replay: the replay of the source run whose logged oracle reply it scores (no oracle call).
    rescore_of: str | None = None
    # What invoke needs of the run's request, so it reads nothing back (header names only; values stay in
    # the secret store under `secret_ref`). None on events logged before they were carried.
    oracle: OracleSpec | None = None
    secret_ref: str | None = None
    judge_terms: JudgeTerms | None = None  # None: no budget, answers reused (as before they existed)


class ReplayInvoked(Payload):
    TOPIC = "verify.replay.invoked"
    KEY_FIELD = "replay_id"
    DOC = "The oracle answered for one change."

    replay_id: str
    record: GroundTruthRecord  # carried along so the judge needs no other read
    question: str
    reply: OracleReply
    latency_ms: float
    question_input_tokens: int = 0
    question_output_tokens: int = 0
    question_cost_usd: float = 0.0
    # Dedup keys of the `verify.judge.called` events that produced the question, in call order.
    question_calls: list[str] = Field(default_factory=list)
    repeat: int | None = Field(default=None, ge=0)
    rescore_of: str | None = None  # the source run's replay whose logged reply this is (a rescore)
    judge_terms: JudgeTerms | None = None  # the run's, from the replay request


class ReplayScored(Payload):
    TOPIC = "verify.replay.scored"
    KEY_FIELD = "replay_id"
    DOC = "The judge scored one replay."

    replay_id: str
    score: ReplayScore
    # Dedup keys of the `verify.judge.called` events behind this score, in call order (the last one's raw
    # text is what the score was parsed from), and the methodology it was judged under.
    judge_calls: list[str] = Field(default_factory=list)
    methodology_version: str | None = None


class JudgeCalled(Payload, JudgeCall):
    """One judge round trip for one replay (the payload is flat so readers can drop `raw_text` cheaply)."""

    TOPIC = "verify.judge.called"
    KEY_FIELD = "call_key"
    DOC = "One judge round trip (follow-up question or scoring, repairs included): raw text, tokens, cost."

    replay_id: str
    call_key: str = Field(description="`<replay_id>:<purpose>:<judge>:<round_trip>:<sha256(raw_text)[:16]>`")


class JudgeStarted(Payload, JudgeAttempt):
    """A judge request about to be sent (logged before it is): with no `verify.judge.called` of the same
    `attempt_id`, the request may have been billed without its answer reaching the log."""

    TOPIC = "verify.judge.started"
    KEY_FIELD = "attempt_id"
    DOC = "A judge request about to be sent (logged before it is sent; its outcome is a `verify.judge.called`)."

    replay_id: str


METHODOLOGY_RUN_ID = "methodology"  # the correlation id `run-methodology` groups registry events


class MethodologyRegistered(Payload):
    """A methodology version: its files (prompts, rubric, parsing conventions) and the hash over them.

    Not a run's event: its run_id is always `methodology`. A version is registered once; the first
    registration wins (the dedup key is the version)."""

    TOPIC = "verify.methodology.registered"
    KEY_FIELD = "version"
    DOC = "A methodology version (prompt set, rubric, parsing) and its hash; run_id `methodology`."

    version: str = Field(pattern=r"^v[0-9]+(\.[0-9]+)*$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    files: dict[str, str] = Field(description="file name → SHA-256 of its bytes")
    contents: dict[str, str] = Field(default_factory=dict, description="file name → text, for auditing")
    description: str = ""
    registered_by: str
    registered_at: AwareDatetime


class ReplayFailed(Payload):
    TOPIC = "verify.replay.failed"
    KEY_FIELD = "replay_id"
    DOC = "A replay failed (oracle or judge)."

    replay_id: str
    ground_truth_id: str
    stage: Literal["invoke", "score"]
    reason: str


class RunCertifying(Payload):
    TOPIC = "verify.run.certifying"
    DOC = "Every replay is scored or failed."

    total: int


class CertificateIssued(Payload):
    TOPIC = "verify.certificate.issued"
    DOC = "The run's one certificate."

    certificate: CalibrationCertificate


class RunCompleted(Payload):
    TOPIC = "verify.run.completed"
    DOC = "The run ended with a certificate."

    certificate_id: str


class RunFailed(Payload):
    TOPIC = "verify.run.failed"
    DOC = "The run ended without a certificate."

    reason: str
    stage: str
    # The watchdog's: the log position of the run's last event when it decided. The writer refuses the
    # failure if the run has events logged after it (it progressed while the decision was being made).
    as_of_seq: int | None = Field(default=None, ge=0)


class RatingSubmitted(Payload):
    """A person's 1–5 rating of one replay of a certificate; a user's newer rating replaces the older."""

    TOPIC = "verify.rating.submitted"
    KEY_FIELD = "rating_id"
    DOC = "A person rated one replay."

    rating_id: str
    certificate_id: str
    replay_id: str
    user_id: str
    rating: int = Field(ge=1, le=5)
    rated_at: AwareDatetime


@dataclass(frozen=True, slots=True)
class TopicSpec:
    topic: str
    model: type[Payload]
    version: int
    key_field: str  # payload field that makes the dedup key
    doc: str

    @classmethod
    def of(cls, model: type[Payload]) -> TopicSpec:
        return cls(model.TOPIC, model, model.VERSION, model.KEY_FIELD, model.DOC)


PAYLOADS: tuple[type[Payload], ...] = (
    RunRequested,
    RunIngesting,
    RunIngested,
    ReplayRequested,
    ReplayInvoked,
    ReplayScored,
    ReplayFailed,
    RunCertifying,
    CertificateIssued,
    RunCompleted,
    RunFailed,
    RatingSubmitted,
    JudgeCalled,
    JudgeStarted,
    MethodologyRegistered,
)
TOPICS: dict[str, TopicSpec] = {model.TOPIC: TopicSpec.of(model) for model in PAYLOADS}

P = TypeVar("P", bound="Payload")

TOPIC_OF_MODEL: dict[type[Payload], TopicSpec] = {spec.model: spec for spec in TOPICS.values()}


def make_event(payload: Payload, *, causation_id: str | None = None) -> Envelope:
    """Wrap a payload in a new envelope with its topic, version and deterministic dedup key."""
    spec = TOPIC_OF_MODEL[type(payload)]
    key = getattr(payload, spec.key_field)
    return Envelope(
        event_id=new_event_id(),
        timestamp=utcnow(),
        topic=spec.topic,
        correlation_id=correlation_for(payload.run_id),
        causation_id=causation_id,
        payload=payload.model_dump(mode="json"),
        version=spec.version,
        dedup_key=f"{spec.topic}:{key}",
    )


def parse_payload(envelope: Envelope) -> Payload:
    """Validate an envelope's payload against its topic's model; unknown topics are refused."""
    spec = TOPICS.get(envelope.topic)
    if spec is None:
        raise EnvelopeError(f"unknown topic {envelope.topic!r}")
    if envelope.version > spec.version:
        raise EnvelopeError(f"{envelope.topic} payload version {envelope.version} is newer than {spec.version}")
    try:
        payload = spec.model.model_validate(envelope.payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise EnvelopeError(f"invalid {envelope.topic} payload: {where}: {first['msg']}") from exc
    if payload.run_id != envelope.run_id:
        raise EnvelopeError("payload run_id does not match the envelope's correlationId")
    return payload


def payload_as(envelope: Envelope, model: type[P]) -> P:
    payload = parse_payload(envelope)
    if not isinstance(payload, model):
        raise EnvelopeError(f"expected {model.__name__}, got {type(payload).__name__}")
    return payload


class Subjects:
    """Maps topics to NATS subjects under a configurable root (tests use a unique root).

    `<root>.<aggregate>.<event>.<run_id>`; with several partitions the run's partition comes before its id,
    `<root>.<aggregate>.<event>.<partition>.<run_id>`, so each writer filters its own partition's events."""

    def __init__(self, root: str = "verify", partitioning: Partitioning | None = None) -> None:
        self.root = root
        self.partitioning = partitioning or Partitioning()

    def for_event(self, envelope: Envelope) -> str:
        return self.subject(envelope.topic, envelope.run_id)

    def subject(self, topic: str, run_id: str) -> str:
        base = f"{self.root}{topic.removeprefix('verify')}"
        if self.partitioning.partitioned:
            return f"{base}.{self.partitioning.of_run(run_id)}.{run_id}"
        return f"{base}.{run_id}"

    def topic_filter(self, topic: str) -> str:
        return f"{self.root}{topic.removeprefix('verify')}.{self.run_wildcard}"

    def publish_filters(self, topic: str) -> list[str]:
        """What a role may publish for `topic`: with partitions, one filter per valid partition token, so
        nothing can be published where no writer listens."""
        base = f"{self.root}{topic.removeprefix('verify')}"
        if not self.partitioning.partitioned:
            return [f"{base}.*"]
        return [f"{base}.{k}.*" for k in self.partitioning.indices]

    def partition_filter(self, partition: int) -> str:
        """Every event of one partition (the partition's writer consumes this)."""
        if not self.partitioning.partitioned:
            return self.everything
        return f"{self.root}.*.*.{partition}.*"

    def partition_of_subject(self, subject: str) -> int | None:
        """The partition token of a subject (None with one partition, or when it carries none)."""
        if not self.partitioning.partitioned:
            return None
        tokens = subject.split(".")
        return int(tokens[-2]) if len(tokens) >= 2 and tokens[-2].isdigit() else None

    @property
    def everything(self) -> str:
        return f"{self.root}.>"

    def of_run(self, run_id: str) -> str:
        if self.partitioning.partitioned:
            return f"{self.root}.*.*.{self.partitioning.of_run(run_id)}.{run_id}"
        return f"{self.root}.*.*.{run_id}"

    @property
    def run_wildcard(self) -> str:
        """The wildcard for the tokens after the topic: the run id, and its partition when partitioned."""
        return "*.*" if self.partitioning.partitioned else "*"

    def user_pattern(self, pattern: str) -> str:
        """An operator's `verify.run.*`-style pattern, rewritten under this root."""
        if pattern == "verify" or pattern.startswith("verify."):
            return self.root + pattern.removeprefix("verify")
        return pattern
