"""The invoke and score handlers on the in-memory ports: what they emit, and the paid work they skip.

The oracle is the bundled sample (a real Python oracle) and the judge the offline lexical scorer: nothing
is faked but the log, the bus, the read model and the secrets, by their in-memory twins (held to the same
contract as the servers in tests/integration/test_log_ports.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest

from echelon_platform.adapters.memory import MemoryLog, MemoryPublisher, MemorySecrets
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    ReplayFailed,
    ReplayInvoked,
    ReplayRequested,
    ReplayScored,
    RunCompleted,
    RunFailed,
    Subjects,
    make_event,
    parse_payload,
    payload_as,
)
from echelon_platform.errors import StoreError
from echelon_platform.metrics import Metrics
from pipeline_workers.handlers.context import StageContext
from pipeline_workers.handlers.guards import PaidWorkGuard
from pipeline_workers.handlers.invoke import InvokeHandler
from pipeline_workers.handlers.score import ScoreHandler
from pipeline_workers.scoring.offline import OfflineLexicalScorer
from tests.factories import record, requested

RUN = "r1"
REPLAY = f"{RUN}-0000"


class Ports:
    def __init__(self, *, max_payload: int = 1024 * 1024) -> None:
        self.settings = Settings(oracle_allowlist=["pipeline_workers.oracles.sample:summarise"])
        self.log = MemoryLog()
        self.bus = MemoryPublisher(
            Subjects(self.settings.subject_root, self.settings.partitioning), max_payload=max_payload
        )
        self.guard = PaidWorkGuard(self.log)

    def context(self, http: httpx.AsyncClient) -> StageContext:
        return StageContext(
            log=self.log,
            guard=self.guard,
            publisher=self.bus,
            stream=self.bus,
            secrets=MemorySecrets(),
            subjects=self.bus.subjects,
            settings=self.settings,
            http=http,
        )

    async def logged(self, *events: Envelope) -> None:
        await self.log.append_batch([(e, i) for i, e in enumerate(events, start=await self.log.max_seq() + 1)])


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def replay_requested() -> Envelope:
    return make_event(ReplayRequested(run_id=RUN, replay_id=REPLAY, index=0, record=record(0)))


async def invoke(ports: Ports, http: httpx.AsyncClient, event: Envelope) -> list[Envelope]:
    handler = InvokeHandler(ports.context(http), OfflineLexicalScorer())
    return list(await handler.handle(event, parse_payload(event)))


async def test_invoke_calls_the_oracle_for_a_logged_request(http: httpx.AsyncClient) -> None:
    ports = Ports()
    await ports.logged(requested(RUN))
    event = replay_requested()
    caused = await invoke(ports, http, event)
    invoked = [payload_as(e, ReplayInvoked) for e in caused if e.topic == "verify.replay.invoked"]
    assert len(invoked) == 1
    assert invoked[0].replay_id == REPLAY and invoked[0].reply.summary
    assert invoked[0].question
    assert all(e.causation_id == event.event_id for e in caused)


async def test_invoke_reads_a_request_the_log_does_not_hold_yet_from_the_stream(http: httpx.AsyncClient) -> None:
    ports = Ports()
    await ports.bus.publish(requested(RUN))
    caused = await invoke(ports, http, replay_requested())
    assert [e.topic for e in caused if e.topic.startswith("verify.replay.")] == ["verify.replay.invoked"]


async def test_invoke_fails_a_reply_too_large_for_the_bus_once(http: httpx.AsyncClient) -> None:
    ports = Ports(max_payload=9 * 1024)  # 1 KiB left after the headroom for headers and subject
    await ports.logged(requested(RUN))
    caused = await invoke(ports, http, replay_requested())
    failed = [payload_as(e, ReplayFailed) for e in caused if e.topic == "verify.replay.failed"]
    assert len(failed) == 1 and "oracle reply too large" in failed[0].reason
    assert not [e for e in caused if e.topic == "verify.replay.invoked"]


async def test_invoke_skips_a_replay_whose_outcome_the_log_holds(http: httpx.AsyncClient) -> None:
    ports = Ports()
    await ports.logged(requested(RUN))
    outcome = make_event(ReplayFailed(run_id=RUN, replay_id=REPLAY, ground_truth_id="pr-0", stage="invoke", reason="x"))
    await ports.logged(outcome)
    assert await invoke(ports, http, replay_requested()) == []


async def test_invoke_skips_a_run_that_is_over(http: httpx.AsyncClient) -> None:
    ports = Ports()
    request = requested(RUN)
    await ports.logged(request)
    await ports.logged(make_event(RunFailed(run_id=RUN, reason="gave up", stage="watchdog")))
    assert await invoke(ports, http, replay_requested()) == []


async def invoked_event(ports: Ports, http: httpx.AsyncClient) -> Envelope:
    await ports.logged(requested(RUN))
    (event,) = [e for e in await invoke(ports, http, replay_requested()) if e.topic == "verify.replay.invoked"]
    return event


async def test_score_grades_the_reply_and_logs_each_judge_call(http: httpx.AsyncClient) -> None:
    ports = Ports()
    event = await invoked_event(ports, http)
    handler = ScoreHandler(ports.context(http), OfflineLexicalScorer(), Metrics())
    caused = list(await handler.handle(event, parse_payload(event)))
    (scored,) = [payload_as(e, ReplayScored) for e in caused if e.topic == "verify.replay.scored"]
    calls = [e for e in caused if e.topic == "verify.judge.called"]
    assert scored.replay_id == REPLAY
    assert 0.0 <= scored.score.precision <= 1.0 and 0.0 <= scored.score.recall <= 1.0
    assert scored.judge_calls == [e.dedup_key for e in calls]


async def test_score_is_not_paid_for_twice(http: httpx.AsyncClient) -> None:
    ports = Ports()
    event = await invoked_event(ports, http)
    handler = ScoreHandler(ports.context(http), OfflineLexicalScorer(), Metrics())
    first = list(await handler.handle(event, parse_payload(event)))
    await ports.logged(*first)  # the writer logged the outcome; the message is redelivered
    assert list(await handler.handle(event, parse_payload(event))) == []


async def test_the_guard_reads_the_log_for_the_runs_end_and_the_outcome_in_one_query() -> None:
    """The read model may lag the log (or be rebuilding): the log alone says whether paid work is still due."""
    log = MemoryLog()
    asked: list[list[str]] = []
    has = log.has_dedup_keys

    async def counted(keys: Sequence[str]) -> set[str]:
        asked.append(list(keys))
        return await has(keys)

    log.has_dedup_keys = counted  # type: ignore[method-assign]
    guard = PaidWorkGuard(log)
    outcome = [f"verify.replay.scored:{REPLAY}"]
    assert await guard.skip_reason(RUN, outcome) is None
    await log.append_batch([(requested(RUN), 1), (make_event(RunCompleted(run_id=RUN, certificate_id="c1")), 2)])
    assert await guard.skip_reason(RUN, outcome) == "run already ended"
    assert await guard.skip_reason("OTHER", outcome) is None
    assert len(asked) == 3 and all(len(keys) == 3 for keys in asked)  # one query each, the run's end included


async def test_lookups_made_together_go_to_the_log_in_one_query_each_with_its_own_answer() -> None:
    log = MemoryLog()
    asked: list[int] = []
    has = log.has_dedup_keys

    async def counted(keys: Sequence[str]) -> set[str]:
        asked.append(len(keys))
        await asyncio.sleep(0)  # an answer on its way: lookups made meanwhile wait for the next query
        return await has(keys)

    log.has_dedup_keys = counted  # type: ignore[method-assign]
    runs = [f"01JD5Q0000RUNGUARDS{i:07d}" for i in range(60)]
    await log.append_batch([(requested(runs[0]), 1), (make_event(RunFailed(run_id=runs[0], reason="x", stage="t")), 2)])
    failed = ReplayFailed(run_id=runs[1], replay_id=f"{runs[1]}-0000", ground_truth_id="g", stage="invoke", reason="x")
    await log.append_batch([(requested(runs[1]), 3), (make_event(failed), 4)])
    guard = PaidWorkGuard(log)
    reasons = await asyncio.gather(*(guard.skip_reason(r, [f"verify.replay.failed:{r}-0000"]) for r in runs))
    assert reasons[0] == "run already ended"
    assert reasons[1] == f"already in the log: verify.replay.failed:{runs[1]}-0000"
    assert all(reason is None for reason in reasons[2:])
    assert len(asked) <= 2 and sum(asked) == 3 * len(runs)  # one query for all sixty (a second if one came late)


async def test_a_log_that_cannot_answer_fails_every_lookup_waiting_on_it() -> None:
    class Down:
        async def has_dedup_keys(self, keys: Sequence[str]) -> set[str]:
            raise StoreError("Postgres unavailable")

    guard = PaidWorkGuard(Down())  # type: ignore[arg-type]
    results = await asyncio.gather(*(guard.skip_reason(RUN, ["k"]) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
