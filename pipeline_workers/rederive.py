"""Rebuild a certificate from the event log alone, with no judge call: `echelon certificates rederive ID`.

Each replay's verdict is parsed again, by the methodology's parser, from the raw judge text its score
event names (`judge_calls`, the last one); tokens and cost are summed again from the logged judge calls;
the certificate is rebuilt by the same arithmetic. What no judge text can tell — when a score was made,
how long it took, the oracle's identity and the issue time — is taken from the logged score events and
the stored certificate. Equal content hashes then mean every number follows from the logged judge answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from echelon_platform.domain.certificate import build_certificate
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    METHODOLOGY_RUN_ID,
    CertificateIssued,
    JudgeCalled,
    MethodologyRegistered,
    Payload,
    ReplayInvoked,
    ReplayScored,
    payload_as,
)
from echelon_platform.domain.repeats import with_provenance
from echelon_platform.domain.run_inputs import run_inputs
from echelon_platform.domain.values import CalibrationCertificate, JudgeUsage, ReplayScore
from echelon_platform.errors import EchelonError
from echelon_platform.ports.log import LogReader
from pipeline_workers.handlers.judge_log import reused_replays
from pipeline_workers.scoring.base import make_score, replay_usage, usage_of
from pipeline_workers.scoring.parsing import parse_judge_output

CERTIFICATE_FIELDS = (
    "precision",
    "recall",
    "reply_accuracy",
    "composite_score",
    "brier",
    "replay_count",
    "scoring_model",
    "methodology_version",
    "methodology_hash",
    "mixed_judges",
    "calibration",
    "repeat_spread",
    "rescored_from",
    "uncertainty",
    "warning",
    "content_hash",
)
P = TypeVar("P", bound=Payload)


class RederiveError(EchelonError):
    """The log lacks what re-deriving needs (e.g. a certificate issued before judge calls were logged)."""


@dataclass
class Rederived:
    stored: CalibrationCertificate
    rebuilt: CalibrationCertificate
    judge_calls: int
    differences: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.differences


@dataclass
class _Question:
    question_input_tokens: int
    question_output_tokens: int
    question_cost_usd: float


def _by_topic(events: Sequence[Envelope], topic: str) -> list[Envelope]:
    return [e for e in events if e.topic == topic]


def _payloads(events: Sequence[Envelope], topic: str, model: type[P]) -> list[P]:
    return [payload_as(e, model) for e in _by_topic(events, topic)]


def rederive(events: Sequence[Envelope], registry: Sequence[Envelope]) -> Rederived:
    """Rebuild the certificate of one run from its events (in log order) and the methodology registry."""
    issued = _by_topic(events, CertificateIssued.TOPIC)
    # Certify folded the log as it was when it issued the first certificate: a replay invoked or scored
    # later (a slow one, given up on) was never part of it.
    first = next((i for i, e in enumerate(events) if e.topic == CertificateIssued.TOPIC), len(events))
    events = events[:first]
    inputs = run_inputs(events)  # the same fold certify made
    request, ingest = inputs.request, inputs.ingested
    if not issued or request is None or ingest is None:
        raise RederiveError("the log holds no certificate (or no request or ingest) for this run")
    stored = payload_as(issued[0], CertificateIssued).certificate
    calls = {e.dedup_key: payload_as(e, JudgeCalled) for e in _by_topic(events, JudgeCalled.TOPIC)}
    invoked = {p.replay_id: p for p in (payload_as(e, ReplayInvoked) for e in _by_topic(events, ReplayInvoked.TOPIC))}
    scores: list[ReplayScore] = []
    used = 0
    for replay_id, logged in sorted(inputs.scored.items()):
        scores.append(_rescore(logged, invoked.get(replay_id), calls))
        used += len(logged.judge_calls) + len(invoked[replay_id].question_calls)
    failed = list(inputs.failed.values())
    versions = inputs.methodology_versions(stored.methodology_version)
    if len(versions) != 1:
        raise RederiveError(f"replays name {len(versions)} methodology versions: {sorted(versions)}")
    (version,) = versions
    rebuilt = build_certificate(
        run_id=request.run_id,
        construct_id=request.construct_id,
        scores=scores,
        failed=failed,
        weights=request.weights,
        min_replays=request.min_replays,
        ground_truth_source=ingest.ground_truth_source,
        commit_range=ingest.commit_range,
        methodology_version=version,
        timestamp=stored.timestamp,
        oracle=stored.oracle,
        selection_policy=ingest.selection_policy,
        requested=ingest.requested,
        found=ingest.total // (ingest.repeats or 1),
        shortfall=ingest.shortfall,
        reused=reused_replays(events),
        budget_usd=request.max_cost_usd,
        methodology_hash=_registered_hash(registry, version),
        # A refused mix never became a certificate: any certificate in the log was issued under "flag".
        judge_mixing="flag",
        intervals=stored.uncertainty is not None,  # a certificate issued before intervals is rebuilt without
    )
    rebuilt = with_provenance(
        rebuilt,
        repeats=ingest.repeats,
        rescored_from=request.rescore.source_certificate_id if request.rescore else None,
    )
    differences = [
        f"{name}: stored {getattr(stored, name)!r}, rederived {getattr(rebuilt, name)!r}"
        for name in CERTIFICATE_FIELDS
        if getattr(stored, name) != getattr(rebuilt, name)
    ]
    if stored.individual_scores != rebuilt.individual_scores:
        differences.append("individual_scores differ")
    if stored.failed_replays != rebuilt.failed_replays:
        differences.append("failed_replays differ")
    return Rederived(stored=stored, rebuilt=rebuilt, judge_calls=used, differences=differences)


def _rescore(logged: ReplayScored, invoked: ReplayInvoked | None, calls: dict[str, JudgeCalled]) -> ReplayScore:
    replay_id = logged.replay_id
    if invoked is None:
        raise RederiveError(f"replay {replay_id}: its invoke event is not in the log")
    if not logged.judge_calls:
        raise RederiveError(f"replay {replay_id}: its score names no judge calls (scored before they were logged)")
    missing = [k for k in (*invoked.question_calls, *logged.judge_calls) if k not in calls]
    if missing:
        raise RederiveError(f"replay {replay_id}: judge call(s) not in the log: {', '.join(missing)}")
    final = calls[logged.judge_calls[-1]]
    if final.raw_truncated:
        raise RederiveError(f"replay {replay_id}: the judge's answer was logged truncated")
    verdict = parse_judge_output(final.raw_text, expected_claims=len(invoked.reply.key_claims))
    question = usage_of(calls[k] for k in invoked.question_calls)
    score = make_score(
        replay_id=replay_id,
        record=invoked.record,
        verdict=verdict,
        scoring_model=final.judge,
        started=0.0,
        usage=JudgeUsage(),
        reply=invoked.reply,
        latency_ms=logged.score.scoring_latency_ms,
        scored_at=logged.score.scored_at,
    )
    scoring = usage_of(calls[k] for k in logged.judge_calls)
    usage = replay_usage(scoring, _Question(question.input_tokens, question.output_tokens, question.cost_usd))
    return score.model_copy(update={**usage, "repeat": invoked.repeat})


def _registered_hash(registry: Sequence[Envelope], version: str) -> str:
    for event in registry:
        if event.topic == MethodologyRegistered.TOPIC:
            registered = payload_as(event, MethodologyRegistered)
            if registered.version == version:
                return registered.sha256
    raise RederiveError(f"methodology {version} is not registered in the log")


async def rederive_from_store(store: LogReader, certificate_id: str) -> Rederived:
    run_id = certificate_id.removeprefix("cert-")
    events = await store.run_events(run_id)
    registry = await store.run_events(METHODOLOGY_RUN_ID, [MethodologyRegistered.TOPIC])
    return rederive(events, registry)
