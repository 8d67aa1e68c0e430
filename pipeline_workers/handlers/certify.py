"""Certify: once every replay is scored or failed, issue the run's one certificate.

Idempotent in every partial-publish case: a certificate already in the log is re-emitted as stored (with
`run.completed`), never rebuilt with new numbers; events not yet in the log make it wait, not fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from echelon_platform.adapters.signing_keys import Keyring
from echelon_platform.domain.certificate import JudgeMixing, build_certificate
from echelon_platform.domain.envelope import Envelope, utcnow
from echelon_platform.domain.events import (
    CertificateIssued,
    JudgeCalled,
    Payload,
    RunCertifying,
    RunCompleted,
    RunFailed,
    make_event,
    payload_as,
)
from echelon_platform.domain.repeats import with_provenance
from echelon_platform.domain.run_inputs import INPUT_TOPICS, run_inputs
from echelon_platform.errors import ConfigError, NotYetInLog, StageError
from echelon_platform.ports.log import LogReader
from pipeline_workers.handlers.judge_log import reused_replays
from pipeline_workers.oracles.identity import oracle_identity
from pipeline_workers.scoring.prompts import METHODOLOGY_VERSION, Methodology, load_methodology

_TOPICS = (
    *INPUT_TOPICS,
    CertificateIssued.TOPIC,
    RunCompleted.TOPIC,
    RunFailed.TOPIC,
    JudgeCalled.TOPIC,  # which answers were reused
)


class CertifyHandler:
    stage = "certify"
    topic = RunCertifying.TOPIC

    def __init__(
        self,
        store: LogReader,
        keyring: Keyring,
        *,
        methodology_version: str = METHODOLOGY_VERSION,
        judge_mixing: JudgeMixing = "flag",
    ) -> None:
        self.store = store
        # Only this stage holds the private key: a signature by it is what makes a certificate genuine.
        self.keyring = keyring
        self.methodology_version = methodology_version  # for scores logged without one (older events)
        self.judge_mixing = judge_mixing

    async def handle(self, envelope: Envelope, payload: Payload) -> Sequence[Envelope]:
        assert isinstance(payload, RunCertifying)
        # The coordinator announces `run.certifying` after committing every replay outcome, but a stage may
        # see it before a restarted coordinator caught up: whatever is missing, wait for it (NotYetInLog).
        events = await self.store.run_events(payload.run_id, _TOPICS)
        # How the run ended is the lifecycle's rule, in log order (`run_events` is in log order).
        decider = next((e for e in events if e.topic in (CertificateIssued.TOPIC, RunFailed.TOPIC)), None)
        if decider is not None:
            if decider.topic == RunFailed.TOPIC or any(e.topic == RunCompleted.TOPIC for e in events):
                return []  # the run already ended
            # Issued, but `run.completed` was lost (a crash between the two publishes): the same event again.
            return self._reissue(decider)
        inputs = run_inputs(events)
        request, ingested = inputs.request, inputs.ingested
        if request is None or ingested is None:
            raise NotYetInLog(f"run {payload.run_id}: request or ingest not in the log yet")
        if not inputs.complete:
            raise NotYetInLog(f"run {payload.run_id}: {inputs.outcomes} of {ingested.total} replay outcomes in the log")
        try:
            methodology = _one_methodology(
                inputs.methodology_versions(self.methodology_version) or {self.methodology_version}
            )
            # A thousand bootstrap resamples over the replays: CPU kept off the event loop.
            certificate = await asyncio.to_thread(
                build_certificate,
                run_id=payload.run_id,
                construct_id=request.construct_id,
                scores=[s.score for s in inputs.scored.values()],
                failed=list(inputs.failed.values()),
                weights=request.weights,
                min_replays=request.min_replays,
                ground_truth_source=ingested.ground_truth_source,
                commit_range=ingested.commit_range,
                methodology_version=methodology.version,
                methodology_hash=methodology.sha256,
                judge_mixing=self.judge_mixing,
                timestamp=utcnow(),
                oracle=oracle_identity(request.oracle),
                selection_policy=ingested.selection_policy,
                requested=ingested.requested,
                found=ingested.total // (ingested.repeats or 1),
                shortfall=ingested.shortfall,
                reused=reused_replays(events),
                budget_usd=request.max_cost_usd,
            )
            certificate = with_provenance(
                certificate,
                repeats=ingested.repeats,
                rescored_from=request.rescore.source_certificate_id if request.rescore else None,
            )
        except StageError as exc:
            return self.give_up(envelope, payload, str(exc))
        issued = make_event(
            CertificateIssued(run_id=payload.run_id, certificate=self.keyring.sign(certificate)),
            causation_id=envelope.event_id,
        )
        completed = make_event(
            RunCompleted(run_id=payload.run_id, certificate_id=certificate.certificate_id),
            causation_id=issued.event_id,
        )
        return [issued, completed]

    @staticmethod
    def _reissue(stored: Envelope) -> list[Envelope]:
        issued = Envelope.model_validate(stored.model_dump())  # the stored event itself: same id, same bytes
        certificate = payload_as(issued, CertificateIssued).certificate
        completed = make_event(
            RunCompleted(run_id=issued.run_id, certificate_id=certificate.certificate_id),
            causation_id=issued.event_id,
        )
        return [issued, completed]

    def give_up(self, envelope: Envelope, payload: Payload, reason: str) -> Sequence[Envelope]:
        failed = RunFailed(run_id=envelope.run_id, reason=reason, stage=self.stage)
        return [make_event(failed, causation_id=envelope.event_id)]


def _one_methodology(versions: set[str]) -> Methodology:
    """The one methodology the run's replays were scored with: one certificate states one method."""
    if len(versions) > 1:
        raise StageError(f"replays were scored under different methodology versions: {', '.join(sorted(versions))}")
    (version,) = versions
    try:
        return load_methodology(version)
    except ConfigError as exc:
        raise StageError(f"methodology {version} is not available to the certify stage: {exc}") from exc
