"""One fold of a run's certificate inputs: certify and rederive build the same certificate from one log."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from echelon_platform.adapters.signing_keys import Keyring, b64url
from echelon_platform.domain.cert_validity import verify
from echelon_platform.domain.certificate import build_certificate, content_hash, document_hash, signed_content
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    METHODOLOGY_RUN_ID,
    CertificateIssued,
    JudgeCalled,
    MethodologyRegistered,
    OracleSpec,
    ReplayFailed,
    ReplayInvoked,
    ReplayScored,
    RunCertifying,
    RunIngested,
    RunRequested,
    make_event,
    payload_as,
)
from echelon_platform.domain.run_inputs import run_inputs
from echelon_platform.domain.values import CalibrationCertificate, JudgeUsage, OracleReply
from pipeline_workers.handlers import certify as certify_module
from pipeline_workers.handlers.certify import CertifyHandler
from pipeline_workers.rederive import rederive
from pipeline_workers.scoring.base import make_score
from pipeline_workers.scoring.parsing import parse_judge_output
from pipeline_workers.scoring.prompts import load_methodology
from tests.unit.pipeline.helpers import make_record

RUN = "01JRUNINPUTS0000000000000A"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class LogStore:
    """The event store's one read certify makes, over a list (the log)."""

    def __init__(self, events: Sequence[Envelope]) -> None:
        self.events = list(events)

    async def run_events(self, run_id: str, topics: Sequence[str] | None = None) -> list[Envelope]:
        return [e for e in self.events if e.run_id == run_id and (topics is None or e.topic in topics)]


def _judge_text(supported: list[bool], surfaced: list[bool], score: float) -> str:
    return json.dumps(
        {
            "claims": [{"claim": f"claim {i}", "supported": s} for i, s in enumerate(supported)],
            "changes": [{"change": f"change {i}", "surfaced": s} for i, s in enumerate(surfaced)],
            "score": score,
        }
    )


def _scored_replay(index: int, supported: list[bool], surfaced: list[bool], accuracy: float) -> list[Envelope]:
    """invoke → judge call → score, as the stages log them (the score is made from the judge's text)."""
    replay_id = f"{RUN}-{index}"
    record = make_record(id=str(index))
    reply = OracleReply(
        summary="Adds truncate().",
        key_claims=[f"claim {i}" for i in range(len(supported))],
        follow_up_response="It cuts text to a width.",
        metadata={"claim_confidences": [0.9 - 0.1 * i for i in range(len(supported))]},
    )
    invoked = ReplayInvoked(run_id=RUN, replay_id=replay_id, record=record, question="Why?", reply=reply, latency_ms=5)
    text = _judge_text(supported, surfaced, accuracy)
    call = JudgeCalled(
        run_id=RUN,
        replay_id=replay_id,
        call_key=f"{replay_id}:score:offline-lexical-v1:1:{index:016d}",
        judge="offline-lexical-v1",
        model="offline-lexical-v1",
        purpose="score",
        round_trip=1,
        prompt_sha256="0" * 64,
        methodology_version="v1",
        raw_text=text,
        usable=True,
    )
    call_event = make_event(call)
    verdict = parse_judge_output(text, expected_claims=len(supported))
    score = make_score(
        replay_id=replay_id,
        record=record,
        verdict=verdict,
        scoring_model="offline-lexical-v1",
        started=0.0,
        usage=JudgeUsage(),
        reply=reply,
        latency_ms=3.5,
        scored_at=T0,
    )
    scored = ReplayScored(
        run_id=RUN, replay_id=replay_id, score=score, judge_calls=[call_event.dedup_key], methodology_version="v1"
    )
    return [make_event(invoked), call_event, make_event(scored)]


def _failed(index: int, reason: str, stage: str = "invoke") -> Envelope:
    return make_event(
        ReplayFailed(run_id=RUN, replay_id=f"{RUN}-{index}", ground_truth_id=str(index), stage=stage, reason=reason)
    )


def _log() -> list[Envelope]:
    """Five replays: three scored (one after an earlier failure), one that failed twice with different
    reasons (a retried invoke), one that failed once."""
    request = RunRequested(
        run_id=RUN,
        user_id="0xabc",
        construct_id="construct-7",
        repo_url="https://github.com/octo/textkit",
        oracle=OracleSpec(type="python", module="pipeline_workers.oracles.sample", callable="summarise"),
        limit=5,
        min_replays=3,
        weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
        created_at=T0,
    )
    ingested = RunIngested(run_id=RUN, total=5, ground_truth_source="local_git", commit_range="a1..b2", requested=5)
    return [
        make_event(request),
        make_event(ingested),
        _failed(0, "oracle timed out after 30s"),
        *_scored_replay(0, [True, True, False], [True, False], 0.75),
        *_scored_replay(1, [True], [True, True], 1.0),
        *_scored_replay(2, [False, True], [False], 0.5),
        _failed(3, "oracle timed out after 30s"),
        _failed(3, "oracle answered HTTP 502"),
        _failed(4, "judge answer had no JSON object", stage="score"),
    ]


def _registry() -> list[Envelope]:
    methodology = load_methodology("v1")
    registered = MethodologyRegistered(
        run_id=METHODOLOGY_RUN_ID,
        version="v1",
        sha256=methodology.sha256,
        files={},
        registered_by="test",
        registered_at=T0,
    )
    return [make_event(registered)]


def test_each_replay_keeps_its_last_outcome_and_a_score_wins() -> None:
    inputs = run_inputs(_log())
    assert sorted(inputs.scored) == [f"{RUN}-0", f"{RUN}-1", f"{RUN}-2"]
    assert {k: f.reason for k, f in inputs.failed.items()} == {
        f"{RUN}-3": "oracle answered HTTP 502",
        f"{RUN}-4": "judge answer had no JSON object",
    }
    assert inputs.outcomes == 5 and inputs.complete
    assert not run_inputs(_log()[:-1]).complete  # one replay has no outcome yet


async def test_rederive_reproduces_the_certificate_certify_issued_bit_for_bit() -> None:
    log = _log()
    keyring = Keyring(Ed25519PrivateKey.generate(), T0, [])
    trigger = make_event(RunCertifying(run_id=RUN, total=5))
    issued, _completed = await CertifyHandler(LogStore(log), keyring).handle(
        trigger, RunCertifying(run_id=RUN, total=5)
    )
    certificate = payload_as(issued, CertificateIssued).certificate
    assert [f.reason for f in certificate.failed_replays] == [
        "oracle answered HTTP 502",
        "judge answer had no JSON object",
    ]

    again = rederive([*log, issued], _registry())
    assert certificate.uncertainty is not None and certificate.uncertainty.brier_score is not None
    assert again.same, again.differences
    assert again.rebuilt.content_hash == certificate.content_hash
    assert again.rebuilt.model_dump(exclude={"signature"}) == certificate.model_dump(exclude={"signature"})


async def test_one_verdict_for_the_api_and_the_cli() -> None:
    keyring = Keyring(Ed25519PrivateKey.generate(), T0, [])
    handler = CertifyHandler(LogStore(_log()), keyring)
    issued, _ = await handler.handle(make_event(RunCertifying(run_id=RUN, total=5)), RunCertifying(run_id=RUN, total=5))
    document = payload_as(issued, CertificateIssued).certificate.model_dump(mode="json")
    keys = {k.key_id: k.public_key for k in keyring.published}
    assert verify(document, keys).valid
    assert not verify(document, {}).valid and verify(document, {}).hash_ok  # unknown key: only the signature fails
    # A field added after signing is covered by the hash even though the model does not know it.
    assert not verify({**document, "note": "added"}, keys).hash_ok
    tampered = verify({**document, "composite_score": 0.99}, keys)
    assert not tampered.hash_ok and not tampered.aggregates_ok and not tampered.signature_ok
    assert verify({"certificate_id": "x"}, keys).problem


async def test_a_certificate_issued_before_intervals_is_rederived_without_them() -> None:
    log = _log()
    keyring = Keyring(Ed25519PrivateKey.generate(), T0, [])
    handler = CertifyHandler(LogStore(log), keyring)
    issued, _ = await handler.handle(make_event(RunCertifying(run_id=RUN, total=5)), RunCertifying(run_id=RUN, total=5))
    current = payload_as(issued, CertificateIssued).certificate
    older = current.model_copy(update={"uncertainty": None, "signature": None})
    older = keyring.sign(older.model_copy(update={"content_hash": content_hash(older)}))
    again = rederive([*log, make_event(CertificateIssued(run_id=RUN, certificate=older))], _registry())
    assert again.same, again.differences
    assert (
        again.rebuilt.uncertainty is None and again.rebuilt.content_hash == older.content_hash != current.content_hash
    )


async def test_rederive_ignores_replays_logged_after_the_certificate() -> None:
    # A slow replay, given up on (failed), is invoked and scored after certify issued the certificate; an
    # already-scored replay is scored again too. Certify never saw either: rederive must not either.
    log = _log()
    keyring = Keyring(Ed25519PrivateKey.generate(), T0, [])
    issued, _ = await CertifyHandler(LogStore(log), keyring).handle(
        make_event(RunCertifying(run_id=RUN, total=5)), RunCertifying(run_id=RUN, total=5)
    )
    late = [*_scored_replay(4, [True], [True], 1.0), *_scored_replay(2, [True, True], [True], 1.0)]
    again = rederive([*log, issued, *late], _registry())
    assert again.same, again.differences
    assert again.rebuilt.content_hash == payload_as(issued, CertificateIssued).certificate.content_hash


async def test_a_newer_certificate_with_a_field_this_build_does_not_know_is_judged_by_hash_and_signature() -> None:
    private = Ed25519PrivateKey.generate()
    keyring = Keyring(private, T0, [])
    handler = CertifyHandler(LogStore(_log()), keyring)
    issued, _ = await handler.handle(make_event(RunCertifying(run_id=RUN, total=5)), RunCertifying(run_id=RUN, total=5))
    document = payload_as(issued, CertificateIssued).certificate.model_dump(mode="json")
    keys = {k.key_id: k.public_key for k in keyring.published}
    # A newer issuer adds a top-level field and one inside each replay score, and hashes and signs it all.
    scores = [{**s, "judge_region": "eu"} for s in document["individual_scores"]]
    newer = {k: v for k, v in document.items() if k not in ("content_hash", "signature")}
    newer |= {"audit_trail": {"reviewed": True}, "individual_scores": scores}
    newer["content_hash"] = document_hash(newer)
    value = b64url(private.sign(signed_content(newer)))  # as a newer issuer signs what this build cannot model
    newer["signature"] = {**document["signature"], "value": value}
    validity = verify(newer, keys)
    assert validity.certificate is not None and validity.problem is None
    assert validity.hash_ok and validity.signature_ok and validity.valid, validity
    assert "audit_trail" in validity.unknown_fields and "individual_scores.0.judge_region" in validity.unknown_fields
    # The unknown field is covered: changing it after signing breaks hash and signature.
    tampered = verify({**newer, "audit_trail": {"reviewed": False}}, keys)
    assert tampered.certificate is not None and not tampered.hash_ok and not tampered.signature_ok
    assert not tampered.valid
    # Not a certificate is still not a certificate: a known field of the wrong type.
    assert verify({**newer, "replay_count": "many"}, keys).problem


async def test_certify_builds_the_certificate_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = []

    def build(**kwargs: Any) -> CalibrationCertificate:
        threads.append(threading.current_thread())
        return build_certificate(**kwargs)

    monkeypatch.setattr(certify_module, "build_certificate", build)
    keyring = Keyring(Ed25519PrivateKey.generate(), T0, [])
    issued, _ = await CertifyHandler(LogStore(_log()), keyring).handle(
        make_event(RunCertifying(run_id=RUN, total=5)), RunCertifying(run_id=RUN, total=5)
    )
    assert payload_as(issued, CertificateIssued).certificate.uncertainty is not None
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
