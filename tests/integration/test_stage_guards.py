"""Stages never repeat paid work: not for a run that ended, not for an outcome already in the log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from coordinator.assembly import coordinator_for
from coordinator.writer import StateCoordinator
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    OracleSpec,
    ReplayInvoked,
    ReplayRequested,
    RunFailed,
    RunRequested,
    make_event,
)
from echelon_platform.domain.values import GroundTruthRecord, OracleReply, ReplayScore
from pipeline_workers.pipeline import Pipeline
from pipeline_workers.scoring.base import CallLog, JudgeUsage
from pipeline_workers.scoring.offline import OfflineLexicalScorer
from tests.factories import T0, record
from tests.integration import oracle_targets

TARGET = "tests.integration.oracle_targets"


class CountingScorer(OfflineLexicalScorer):
    """The real offline judge, counting its calls (each would be a paid call with the LLM judge)."""

    def __init__(self) -> None:
        super().__init__()
        self.questions = 0
        self.scores = 0

    async def follow_up_question(
        self, record: GroundTruthRecord, *, calls: CallLog | None = None
    ) -> tuple[str, JudgeUsage]:
        self.questions += 1
        return await super().follow_up_question(record, calls=calls)

    async def score(
        self,
        replay_id: str,
        record: GroundTruthRecord,
        reply: OracleReply,
        *,
        question: str | None = None,
        calls: CallLog | None = None,
    ) -> ReplayScore:
        self.scores += 1
        return await super().score(replay_id, record, reply, question=question, calls=calls)


@dataclass
class World:
    settings: Settings
    services: Services
    coordinator: StateCoordinator
    scorer: CountingScorer

    async def publish(self, *events: Envelope) -> None:
        for event in events:
            await self.services.bus.publish(event)

    async def redeliver(self, event: Envelope, tag: str) -> None:
        """The same message a second time (as JetStream does after a lost ack)."""
        subject = self.services.subjects.subject(event.topic, event.run_id)
        await self.services.bus.publish_raw(subject, event.to_wire(), msg_id=f"again-{tag}-{event.event_id}")

    async def stage(self, name: str) -> None:
        async with Pipeline(self.services, self.settings, stages=(name,), scorer=self.scorer) as pipeline:
            stats = await pipeline.run_until_idle()
        assert stats[name].dead_lettered == 0

    async def log_count(self, dedup_key: str) -> int:
        return len(await self.services.store.has_dedup_keys([dedup_key]))


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    settings = settings.model_copy(update={"oracle_allowlist": [f"{TARGET}:*"]})
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        oracle_targets.calls = 0
        yield World(settings, services, coordinator, CountingScorer())


def request_of(run_id: str) -> Envelope:
    return make_event(
        RunRequested(
            run_id=run_id,
            user_id="alice",
            construct_id="counting",
            repo_url="https://github.com/acme/widgets",
            oracle=OracleSpec(type="python", module=TARGET, callable="counting"),
            limit=10,
            min_replays=1,
            weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
            created_at=T0,
        )
    )


def replay_of(run_id: str, i: int = 0) -> Envelope:
    return make_event(ReplayRequested(run_id=run_id, replay_id=f"{run_id}-{i:04d}", index=i, record=record(i)))


async def test_invoke_skips_a_run_that_already_failed(world: World) -> None:
    await world.publish(request_of("GONE"), make_event(RunFailed(run_id="GONE", reason="cancelled", stage="watchdog")))
    await world.coordinator.run(until_idle=True)
    state = await world.services.read_models.get_run("GONE")
    assert state is not None and state.status.name == "FAILED"

    await world.publish(replay_of("GONE"))
    await world.stage("invoke")
    await world.coordinator.run(until_idle=True)
    assert oracle_targets.calls == 0 and world.scorer.questions == 0
    assert await world.log_count("verify.replay.invoked:GONE-0000") == 0


async def test_redelivered_replay_request_does_not_call_the_oracle_again(world: World) -> None:
    replay = replay_of("AGAIN")
    await world.publish(request_of("AGAIN"), replay)
    await world.stage("invoke")
    await world.coordinator.run(until_idle=True)
    assert oracle_targets.calls == 1 and world.scorer.questions == 1
    assert await world.log_count("verify.replay.invoked:AGAIN-0000") == 1

    await world.redeliver(replay, "1")
    await world.stage("invoke")
    assert oracle_targets.calls == 1 and world.scorer.questions == 1


async def test_redelivered_invoked_event_is_not_scored_again(world: World) -> None:
    rec = record(1)
    invoked = make_event(
        ReplayInvoked(
            run_id="SCORED",
            replay_id="SCORED-0000",
            record=rec,
            question="What does parse_1 return?",
            reply=OracleReply(summary="Adds parse_1", key_claims=["Adds function parse_1"], follow_up_response="x"),
            latency_ms=1.0,
        )
    )
    await world.publish(request_of("SCORED"), invoked)
    await world.stage("score")
    await world.coordinator.run(until_idle=True)
    assert world.scorer.scores == 1
    assert await world.log_count("verify.replay.scored:SCORED-0000") == 1

    await world.redeliver(invoked, "1")
    await world.stage("score")
    assert world.scorer.scores == 1
