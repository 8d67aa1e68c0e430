"""Realistic events of one run, for coordinator and projection tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from echelon_platform.adapters.signing_keys import Keyring
from echelon_platform.domain.certificate import build_certificate
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    OracleSpec,
    ReplayFailed,
    ReplayRequested,
    ReplayScored,
    RunIngested,
    RunIngesting,
    RunRequested,
    make_event,
)
from echelon_platform.domain.values import CalibrationCertificate, GroundTruthRecord, ReplayScore

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def record(i: int) -> GroundTruthRecord:
    return GroundTruthRecord(
        id=f"pr-{i}",
        title=f"Fix parser edge case #{i}",
        description="Handles empty input.",
        diff_content=f"diff --git a/p.py b/p.py\n+def parse_{i}(x):\n+    return x or None\n",
        files_changed=["p.py"],
        timestamp=T0 + timedelta(minutes=i),
        repo="acme/widgets",
        sha=f"{i:040x}",
    )


def requested(run_id: str, user: str = "alice", construct: str = "oracle-a") -> Envelope:
    return make_event(
        RunRequested(
            run_id=run_id,
            user_id=user,
            construct_id=construct,
            repo_url="https://github.com/acme/widgets",
            oracle=OracleSpec(type="python", module="pipeline_workers.oracles.sample", callable="summarise"),
            limit=10,
            min_replays=1,
            weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
            created_at=T0,
        )
    )


def score(replay_id: str, i: int) -> ReplayScore:
    return ReplayScore(
        replay_id=replay_id,
        ground_truth_id=f"pr-{i}",
        precision=0.5,
        recall=0.75,
        reply_accuracy=1.0,
        claims_total=4,
        claims_supported=2,
        changes_total=4,
        changes_surfaced=3,
        scoring_model="offline-lexical-v1",
        scoring_latency_ms=1.5,
        scored_at=T0 + timedelta(minutes=i),
    )


def run_events(
    run_id: str,
    n: int = 3,
    *,
    failed: int = 1,
    user: str = "alice",
    requested_changes: int | None = None,
    shortfall: str | None = None,
) -> list[Envelope]:
    """request → ingesting → n replays (the last `failed` of them fail) → ingested (of `requested_changes`)."""
    events = [requested(run_id, user), make_event(RunIngesting(run_id=run_id, source="github"))]
    for i in range(n):
        rid = f"{run_id}-{i:04d}"
        events.append(make_event(ReplayRequested(run_id=run_id, replay_id=rid, index=i, record=record(i))))
        if i >= n - failed:
            events.append(
                make_event(
                    ReplayFailed(
                        run_id=run_id,
                        replay_id=rid,
                        ground_truth_id=f"pr-{i}",
                        stage="invoke",
                        reason="timeout",
                    )
                )
            )
        else:
            events.append(make_event(ReplayScored(run_id=run_id, replay_id=rid, score=score(rid, i))))
    ingested = RunIngested(
        run_id=run_id,
        total=n,
        ground_truth_source="github",
        commit_range="a..b",
        requested=requested_changes,
        shortfall=shortfall,
    )
    events.append(make_event(ingested))
    return events


def certificate(run_id: str, keyring: Keyring | None = None) -> CalibrationCertificate:
    """The certificate of `run_events(run_id, n=2, failed=0)`, built by the real certificate math; signed by
    `keyring` when given (the writer logs only certificates signed by a published key)."""
    scores = [score(f"{run_id}-{i:04d}", i) for i in range(2)]
    cert = build_certificate(
        run_id=run_id,
        construct_id="oracle-a",
        scores=scores,
        failed=[],
        weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
        min_replays=1,
        ground_truth_source="github",
        commit_range="a..b",
        methodology_version="v1",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return keyring.sign(cert) if keyring is not None else cert
