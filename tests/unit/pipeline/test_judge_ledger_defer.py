"""A ledger that defers outcomes (the score handler's) publishes each with the next event, never later."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from echelon_platform.adapters.memory import MemoryLog, MemoryPublisher
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Subjects
from echelon_platform.domain.values import JudgeAttempt, JudgeUsage
from echelon_platform.errors import BusError
from pipeline_workers.handlers.judge_ledger import JudgeLedger
from pipeline_workers.scoring.base import judge_call

RUN, REPLAY = "01JD5Q0000RUNDEFERRED00000", "01JD5Q0000RUNDEFERRED00000-0000"


class Batches(MemoryPublisher):
    """Records each publish_many as one batch (one acknowledged round trip on the real bus)."""

    def __init__(self) -> None:
        super().__init__(Subjects("verify"))
        self.batches: list[list[str]] = []

    async def publish_many(self, envelopes: Sequence[Envelope], *, timeout: float = 10.0) -> list[int]:
        self.batches.append([e.topic for e in envelopes])
        return await super().publish_many(envelopes, timeout=timeout)


def attempt(n: int) -> JudgeAttempt:
    return JudgeAttempt(
        attempt_id=f"att-{n}",
        judge="anthropic:claude-sonnet-4-6",
        model="claude-sonnet-4-6",
        purpose="score",
        round_trip=n,
        attempt=1,
        prompt_sha256=f"{n:064x}",
        methodology_version="v1",
        max_cost_usd=0.01,
    )


def answered(n: int, text: str) -> object:
    return judge_call(
        judge="anthropic:claude-sonnet-4-6",
        model="claude-sonnet-4-6",
        purpose="score",
        round_trip=n,
        prompt_sha256=f"{n:064x}",
        methodology_version="v1",
        usage=JudgeUsage(input_tokens=1200, output_tokens=180, cost_usd=0.0063),
        latency_ms=950.0,
        raw_text=text,
        usable=n == 2,
        attempt_id=f"att-{n}",
        attempt=1,
        status=200,
    )


async def test_a_deferred_outcome_goes_out_with_the_next_request_or_with_the_handlers_events() -> None:
    bus = Batches()
    ledger = JudgeLedger(bus, MemoryLog(), None, RUN, REPLAY, causation_id="cause", defer_outcomes=True)
    await ledger.started(attempt(1))
    await ledger.finished(answered(1, "not JSON"))  # type: ignore[arg-type]
    assert bus.batches == [["verify.judge.started"]]  # the outcome waits for the next publish
    await ledger.started(attempt(2))  # the repair round trip: the first outcome is logged before it leaves
    assert bus.batches[1] == ["verify.judge.called", "verify.judge.started"]
    await ledger.finished(answered(2, '{"claims": []}'))  # type: ignore[arg-type]
    unpublished, keys = ledger.remaining()
    assert [e.topic for e in unpublished] == ["verify.judge.called"]  # published by the stage with the score
    assert len(keys) == 2 and unpublished[0].dedup_key == keys[1]
    assert len(bus.batches) == 2


async def test_without_deferring_each_outcome_is_sent_as_the_call_ends_and_settled_before_the_handler_returns() -> None:
    bus = Batches()
    ledger = JudgeLedger(bus, MemoryLog(), None, RUN, REPLAY, causation_id="cause")
    await ledger.started(attempt(1))
    await ledger.finished(answered(1, '{"question": "Why?"}'))  # type: ignore[arg-type]
    assert ledger.remaining()[0] == []  # sent: the handler's events do not carry it again
    await ledger.settle()
    assert bus.batches == [["verify.judge.started"], ["verify.judge.called"]]


async def test_an_outcome_whose_publish_fails_fails_the_handler_at_settle() -> None:
    class Refusing(Batches):
        async def publish_many(self, envelopes: Sequence[Envelope], *, timeout: float = 10.0) -> list[int]:
            if envelopes[0].topic == "verify.judge.called":
                raise BusError("NATS unavailable")
            return await super().publish_many(envelopes, timeout=timeout)

    ledger = JudgeLedger(Refusing(), MemoryLog(), None, RUN, REPLAY, causation_id="cause")
    await ledger.started(attempt(1))
    await ledger.finished(answered(1, '{"question": "Why?"}'))  # type: ignore[arg-type]
    with pytest.raises(BusError, match="NATS unavailable"):
        await ledger.settle()


async def test_a_handler_failing_for_another_reason_still_logs_the_answers_it_paid_for() -> None:
    bus = Batches()
    ledger = JudgeLedger(bus, MemoryLog(), None, RUN, REPLAY, causation_id="cause", defer_outcomes=True)
    await ledger.started(attempt(1))
    await ledger.finished(answered(1, '{"claims": []}'))  # type: ignore[arg-type]
    await ledger.publish_remaining()  # the score handler does this before re-raising
    assert bus.batches == [["verify.judge.started"], ["verify.judge.called"]]
    assert ledger.remaining()[0] == []
