"""Fake flows: realistic runs published at a chosen rate, with no oracle and no judge.

They feed the dashboard, the WebSocket stream and their load tests with what a busy service produces:
runs that ingest a few changes, replays invoked and scored (some failing), runs that fail at ingest, and
signed certificates built by the real certificate math. Every event goes through the bus and the writer
like any other, so read models, the stream and `replay --verify` see nothing they would not see in use.

Run them into a stack that has no stage workers (`scripts/publish_fake_flow.py` starts one): a stage
worker would also act on the fake `replay.requested` events and call the oracle.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ulid import ULID

from echelon_platform.domain.certificate import build_certificate
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    CertificateIssued,
    OracleSpec,
    Payload,
    ReplayFailed,
    ReplayInvoked,
    ReplayRequested,
    ReplayScored,
    RunCompleted,
    RunFailed,
    RunIngested,
    RunIngesting,
    RunRequested,
    make_event,
)
from echelon_platform.domain.values import (
    CalibrationCertificate,
    FailedReplay,
    GroundTruthRecord,
    OracleIdentity,
    OracleReply,
    ReplayScore,
)

SAMPLE_ORACLE = OracleSpec(type="python", module="pipeline_workers.oracles.sample", callable="summarise")
WEIGHTS = {"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0}
SCORING_MODEL = "offline-lexical-v1"
CONSTRUCTS = ("fake-summariser", "fake-diff-reader", "fake-release-notes")
INGEST_FAILURES = (
    "repository not found or not readable: https://github.com/acme/missing",
    "GitHub rate limit exhausted (resets in 1,203 s)",
)
REPLAY_FAILURES = (
    ("invoke", "oracle timed out after 30 s"),
    ("invoke", "oracle answered 502 Bad Gateway"),
    ("score", "judge reply could not be parsed as the rubric's JSON"),
)
FILES = ("src/parser.py", "src/cli.py", "README.md", "tests/test_parser.py", "src/cache.py")

Signer = Callable[[CalibrationCertificate], CalibrationCertificate]
Publish = Callable[[Sequence[Envelope]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class FlowConfig:
    runs: int = 20
    replays: tuple[int, int] = (3, 12)  # changes per run: uniform in this range
    rate: float = 50.0  # events per second over all runs
    concurrent: int = 8  # runs in flight at once (their events interleave)
    run_failure: float = 0.1  # share of runs that fail at ingest
    replay_failure: float = 0.1  # share of replays that fail (invoke or score)
    user: str = "local"  # the runs' owner: the CLI's user, so `echelon runs` and the dashboard show them
    methodology_version: str = "v1"
    seed: int | None = None


def _record(rng: random.Random, i: int, at: datetime) -> GroundTruthRecord:
    changed = rng.sample(FILES, rng.randint(1, 3))
    number = rng.randint(100, 9999)
    diff = "".join(
        f"diff --git a/{f} b/{f}\n--- a/{f}\n+++ b/{f}\n@@ -1,3 +1,4 @@\n def handle(x):\n+    if x is None:\n"
        f"+        return None\n     return x\n"
        for f in changed
    )
    return GroundTruthRecord(
        id=f"pr-{number}",
        title=rng.choice(("Fix", "Handle", "Speed up", "Document")) + f" {changed[0]} edge case #{number}",
        description="Empty input no longer raises; adds a regression test.",
        diff_content=diff,
        files_changed=changed,
        timestamp=at - timedelta(days=i),
        repo="acme/widgets",
        sha=f"{rng.getrandbits(160):040x}",
    )


def _score(rng: random.Random, replay_id: str, record: GroundTruthRecord, at: datetime) -> ReplayScore:
    claims, changes = rng.randint(2, 6), len(record.files_changed) + rng.randint(0, 2)
    supported, surfaced = rng.randint(0, claims), rng.randint(0, changes)
    return ReplayScore(
        replay_id=replay_id,
        ground_truth_id=record.id,
        precision=supported / claims,
        recall=surfaced / changes,
        reply_accuracy=rng.choice((0.0, 0.5, 1.0, 1.0)),
        claims_total=claims,
        claims_supported=supported,
        changes_total=changes,
        changes_surfaced=surfaced,
        scoring_model=SCORING_MODEL,
        scoring_latency_ms=round(rng.uniform(0.3, 4.0), 3),
        scored_at=at,
    )


def plan_run(rng: random.Random, config: FlowConfig, sign: Signer, now: datetime | None = None) -> list[Envelope]:
    """One run's events in the order a real run logs them (each caused by the one before)."""
    at = now or datetime.now(UTC)
    run_id = str(ULID())
    construct = rng.choice(CONSTRUCTS)
    n = rng.randint(*config.replays)
    request = RunRequested(
        run_id=run_id,
        user_id=config.user,
        construct_id=construct,
        repo_url="https://github.com/acme/widgets",
        oracle=SAMPLE_ORACLE,
        limit=n,
        min_replays=1,
        weights=WEIGHTS,
        created_at=at,
    )
    events = [make_event(request)]

    def then(payload: Payload) -> Envelope:
        event = make_event(payload, causation_id=events[-1].event_id)
        events.append(event)
        return event

    then(RunIngesting(run_id=run_id, source="github"))
    if rng.random() < config.run_failure:
        then(RunFailed(run_id=run_id, reason=rng.choice(INGEST_FAILURES), stage="ingest"))
        return events
    records = [_record(rng, i, at) for i in range(n)]
    for i, record in enumerate(records):
        then(ReplayRequested(run_id=run_id, replay_id=f"{run_id}-{i:04d}", index=i, record=record))
    then(RunIngested(run_id=run_id, total=n, ground_truth_source="github", commit_range="HEAD~40..HEAD"))
    scores: list[ReplayScore] = []
    failed: list[FailedReplay] = []
    for i, record in enumerate(records):
        replay_id = f"{run_id}-{i:04d}"
        failure = rng.choice(REPLAY_FAILURES) if rng.random() < config.replay_failure else None
        if failure is not None and failure[0] == "invoke":
            then(ReplayFailed(run_id=run_id, replay_id=replay_id, ground_truth_id=record.id, stage="invoke",
                              reason=failure[1]))  # fmt: skip
            failed.append(FailedReplay(replay_id=replay_id, ground_truth_id=record.id, stage="invoke",
                                       reason=failure[1]))  # fmt: skip
            continue
        reply = OracleReply(
            summary=f"{record.title}: guards against empty input in {', '.join(record.files_changed)}.",
            key_claims=[f"changes {f}" for f in record.files_changed] + ["adds a None check"],
            follow_up_response="Callers passing None now get None back instead of an exception.",
        )
        then(ReplayInvoked(run_id=run_id, replay_id=replay_id, record=record, question="What breaks for callers?",
                           reply=reply, latency_ms=round(rng.uniform(20, 900), 3)))  # fmt: skip
        if failure is not None:
            then(ReplayFailed(run_id=run_id, replay_id=replay_id, ground_truth_id=record.id, stage="score",
                              reason=failure[1]))  # fmt: skip
            failed.append(FailedReplay(replay_id=replay_id, ground_truth_id=record.id, stage="score",
                                       reason=failure[1]))  # fmt: skip
            continue
        score = _score(rng, replay_id, record, at)
        scores.append(score)
        then(
            ReplayScored(
                run_id=run_id, replay_id=replay_id, score=score, methodology_version=config.methodology_version
            )
        )
    if not scores:
        then(RunFailed(run_id=run_id, reason="All replays failed", stage="certify"))
        return events
    certificate = build_certificate(
        run_id=run_id,
        construct_id=construct,
        scores=scores,
        failed=failed,
        weights=WEIGHTS,
        min_replays=1,
        ground_truth_source="github",
        commit_range="HEAD~40..HEAD",
        methodology_version=config.methodology_version,
        timestamp=at,
        oracle=OracleIdentity(type="python", target=f"{SAMPLE_ORACLE.module}:{SAMPLE_ORACLE.callable}"),
    )
    issued = then(CertificateIssued(run_id=run_id, certificate=sign(certificate)))
    then(RunCompleted(run_id=run_id, certificate_id=certificate.certificate_id))
    assert issued.topic == CertificateIssued.TOPIC
    return events


def interleave(rng: random.Random, config: FlowConfig, sign: Signer) -> Iterator[Envelope]:
    """Every run's events, each run in its own order, `concurrent` runs at a time in random turns."""
    started = 0
    in_flight: list[list[Envelope]] = []
    while started < config.runs or in_flight:
        while started < config.runs and len(in_flight) < config.concurrent:
            in_flight.append(plan_run(rng, config, sign))
            started += 1
        run = rng.choice(in_flight)
        yield run.pop(0)
        if not run:
            in_flight.remove(run)


@dataclass(frozen=True, slots=True)
class FlowReport:
    runs: int
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def publish_flows(publish: Publish, config: FlowConfig, sign: Signer) -> FlowReport:
    """Publish the interleaved flows at `config.rate` events per second (a fixed schedule, so a slow publish
    does not lower the rate for the rest; batches when the rate asks for more than one event per tick)."""
    rng = random.Random(config.seed)
    tick_s = 0.02
    per_tick = max(1.0, config.rate * tick_s)
    events = 0
    started = time.monotonic()
    batch: list[Envelope] = []
    for envelope in interleave(rng, config, sign):
        batch.append(envelope)
        if len(batch) >= per_tick:
            await publish(batch)
            events += len(batch)
            batch = []
            await asyncio.sleep(max(0.0, started + events / config.rate - time.monotonic()))
    if batch:
        await publish(batch)
        events += len(batch)
    return FlowReport(runs=config.runs, events=events, seconds=time.monotonic() - started)
