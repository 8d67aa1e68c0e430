"""Certify: once every replay is scored or failed, issue the run's one certificate."""

from __future__ import annotations

from collections.abc import Sequence

from echelon_platform.adapters.event_store import EventStore
from echelon_platform.domain.certificate import build_certificate
from echelon_platform.domain.envelope import Envelope, utcnow
from echelon_platform.domain.events import (
    CertificateIssued,
    Payload,
    ReplayFailed,
    ReplayScored,
    RunCertifying,
    RunCompleted,
    RunFailed,
    RunIngested,
    RunRequested,
    make_event,
    payload_as,
)
from echelon_platform.domain.values import FailedReplay, ReplayScore
from echelon_platform.errors import StageError
from pipeline_workers.scoring.prompts import METHODOLOGY_VERSION

_TOPICS = (
    "verify.run.requested",
    "verify.run.ingested",
    "verify.replay.scored",
    "verify.replay.failed",
    "verify.certificate.issued",
)


class CertifyHandler:
    stage = "certify"
    topic = "verify.run.certifying"

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def handle(self, envelope: Envelope, payload: Payload) -> Sequence[Envelope]:
        assert isinstance(payload, RunCertifying)
        # The coordinator publishes `run.certifying` only after committing every replay outcome, so the
        # log (read-only here) holds all of them.
        events = await self.store.run_events(payload.run_id, _TOPICS)
        if any(e.topic == "verify.certificate.issued" for e in events):
            return []  # already certified (redelivery); the dedup key would drop a second one anyway
        request = next(payload_as(e, RunRequested) for e in events if e.topic == "verify.run.requested")
        ingested = next(payload_as(e, RunIngested) for e in events if e.topic == "verify.run.ingested")
        scores: dict[str, ReplayScore] = {}
        failed: dict[str, FailedReplay] = {}
        for event in events:
            if event.topic == "verify.replay.scored":
                s = payload_as(event, ReplayScored)
                scores[s.replay_id] = s.score
            elif event.topic == "verify.replay.failed":
                f = payload_as(event, ReplayFailed)
                failed[f.replay_id] = FailedReplay(
                    replay_id=f.replay_id, ground_truth_id=f.ground_truth_id, stage=f.stage, reason=f.reason
                )
        for replay_id in scores:
            failed.pop(replay_id, None)  # a score wins over a failure recorded by an earlier attempt
        try:
            certificate = build_certificate(
                run_id=payload.run_id,
                construct_id=request.construct_id,
                scores=list(scores.values()),
                failed=list(failed.values()),
                weights=request.weights,
                min_replays=request.min_replays,
                ground_truth_source=ingested.ground_truth_source,
                commit_range=ingested.commit_range,
                methodology_version=METHODOLOGY_VERSION,
                timestamp=utcnow(),
            )
        except StageError as exc:
            return self.give_up(envelope, payload, str(exc))
        issued = make_event(
            CertificateIssued(run_id=payload.run_id, certificate=certificate), causation_id=envelope.event_id
        )
        completed = make_event(
            RunCompleted(run_id=payload.run_id, certificate_id=certificate.certificate_id),
            causation_id=issued.event_id,
        )
        return [issued, completed]

    def give_up(self, envelope: Envelope, payload: Payload, reason: str) -> Sequence[Envelope]:
        failed = RunFailed(run_id=envelope.run_id, reason=reason, stage=self.stage)
        return [make_event(failed, causation_id=envelope.event_id)]
