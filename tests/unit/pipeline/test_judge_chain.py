"""Judge fallback: an ordered list of judges, each behind a circuit breaker; a fake Anthropic at the HTTP
boundary (respx) answers per model."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from echelon_platform.domain.values import GroundTruthRecord, JudgeCall, OracleReply
from echelon_platform.errors import ScoringError
from pipeline_workers.scoring.anthropic_judge import AnthropicScorer
from pipeline_workers.scoring.breaker import BreakerState, CircuitBreaker
from pipeline_workers.scoring.chain import JudgeChain
from pipeline_workers.scoring.offline import OfflineLexicalScorer
from pipeline_workers.scoring.parsing import parse_judge_output

from .helpers import SleepRecorder, anthropic_message, anthropic_via_respx

MESSAGES = "https://api.anthropic.com/v1/messages"
REPLY = OracleReply(
    summary="Adds truncate() to textkit.text and exports it.",
    key_claims=["Adds function truncate", "Adds a cache"],
    follow_up_response="It cuts the text and appends '...'.",
)
VERDICT = {
    "claims": [{"claim": "Adds function truncate", "supported": True}, {"claim": "Adds a cache", "supported": False}],
    "changes": [{"change": "truncate helper", "surfaced": True}],
    "score": 0.75,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeAnthropic:
    """Answers per requested model: a list of (status, body) per model, the last one repeated."""

    def __init__(self) -> None:
        self.router = respx.MockRouter(assert_all_called=False)
        self.plan: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.calls: list[str] = []
        self.router.post(MESSAGES).mock(side_effect=self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        model = json.loads(request.content)["model"]
        self.calls.append(model)
        plan = self.plan[model]
        status, body = plan.pop(0) if len(plan) > 1 else plan[0]
        return httpx.Response(status, json=body)


OVERLOADED = (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
GOOD = (200, anthropic_message(json.dumps(VERDICT), input_tokens=1000, output_tokens=100))


@pytest.fixture
def fake() -> FakeAnthropic:
    return FakeAnthropic()


def chain(fake: FakeAnthropic, clock: Clock, *models: str, offline: bool = False) -> JudgeChain:
    judges: list[tuple[Any, CircuitBreaker]] = []
    for model in models:
        scorer = AnthropicScorer(anthropic_via_respx(fake.router), model=model, max_attempts=2, sleep=SleepRecorder())
        judges.append((scorer, CircuitBreaker(failure_threshold=2, cooldown_s=30.0, clock=clock)))
    if offline:
        judges.append((OfflineLexicalScorer(), CircuitBreaker(failure_threshold=2, cooldown_s=30.0, clock=clock)))
    return JudgeChain(judges)


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_the_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # consecutive: a success resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.try_acquire()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.try_acquire()
    clock.now += 9.9
    assert not breaker.try_acquire()
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.try_acquire() and not breaker.try_acquire()  # one trial call at a time
    breaker.record_failure()  # the trial failed: open for another cool-down
    assert breaker.state is BreakerState.OPEN
    clock.now += 10.0
    assert breaker.try_acquire()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.try_acquire()


async def test_the_first_judge_scores_while_it_answers(fake: FakeAnthropic, record: GroundTruthRecord) -> None:
    fake.plan = {"claude-sonnet-4-6": [GOOD], "claude-haiku-4-5": [GOOD]}
    calls: list[JudgeCall] = []
    score = await chain(fake, Clock(), "claude-sonnet-4-6", "claude-haiku-4-5").score(
        "r-0001", record, REPLY, question="Q?", calls=calls
    )
    assert score.scoring_model == "anthropic:claude-sonnet-4-6"
    assert fake.calls == ["claude-sonnet-4-6"]
    # The one round trip is reported with its raw text, and that text parses to the score.
    assert [(c.judge, c.purpose, c.round_trip, c.usable) for c in calls] == [
        ("anthropic:claude-sonnet-4-6", "score", 1, True)
    ]
    assert calls[0].input_tokens == 1000 and calls[0].cost_usd == pytest.approx(score.cost_usd)
    again = parse_judge_output(calls[0].raw_text, expected_claims=len(REPLY.key_claims))
    assert (again.claims.hits, again.changes.hits, again.reply_accuracy) == (1, 1, 0.75)
    assert len(calls[0].prompt_sha256) == 64


async def test_falls_back_in_order_and_the_breaker_skips_a_failing_judge(
    fake: FakeAnthropic, record: GroundTruthRecord
) -> None:
    fake.plan = {"claude-sonnet-4-6": [OVERLOADED], "claude-haiku-4-5": [GOOD]}
    clock = Clock()
    judges = chain(fake, clock, "claude-sonnet-4-6", "claude-haiku-4-5", offline=True)

    first = await judges.score("r-0001", record, REPLY, question="Q?")
    assert first.scoring_model == "anthropic:claude-haiku-4-5"
    assert fake.calls == ["claude-sonnet-4-6", "claude-sonnet-4-6", "claude-haiku-4-5"]  # 2 attempts, then B

    await judges.score("r-0002", record, REPLY, question="Q?")  # second consecutive failure opens A's breaker
    fake.calls.clear()
    third = await judges.score("r-0003", record, REPLY, question="Q?")
    assert third.scoring_model == "anthropic:claude-haiku-4-5"
    assert fake.calls == ["claude-haiku-4-5"]  # A is not even asked while its breaker is open

    # After the cool-down one trial call goes to A again; it has recovered, so it scores.
    fake.plan["claude-sonnet-4-6"] = [GOOD]
    clock.now += 30.0
    fake.calls.clear()
    fourth = await judges.score("r-0004", record, REPLY, question="Q?")
    assert fourth.scoring_model == "anthropic:claude-sonnet-4-6" and fake.calls == ["claude-sonnet-4-6"]


async def test_the_offline_judge_answers_when_every_model_fails(fake: FakeAnthropic, record: GroundTruthRecord) -> None:
    fake.plan = {"claude-sonnet-4-6": [OVERLOADED], "claude-haiku-4-5": [(200, anthropic_message("no json here"))]}
    calls: list[JudgeCall] = []
    score = await chain(fake, Clock(), "claude-sonnet-4-6", "claude-haiku-4-5", offline=True).score(
        "r-0001", record, REPLY, question="Q?", calls=calls
    )
    assert score.scoring_model == "offline-lexical-v1"
    # Sonnet's overloaded attempts are logged with their status (sent, so they count as requests); Haiku
    # answered twice (request and repair), both unusable, both logged; then the offline judge.
    assert [(c.judge, c.round_trip, c.usable, c.status) for c in calls] == [
        ("anthropic:claude-sonnet-4-6", 1, False, 529),
        ("anthropic:claude-sonnet-4-6", 1, False, 529),
        ("anthropic:claude-haiku-4-5", 1, False, 200),
        ("anthropic:claude-haiku-4-5", 2, False, 200),
        ("offline-lexical-v1", 1, True, None),
    ]
    assert [c.attempt for c in calls[:2]] == [1, 2] and "overloaded" in str(calls[0].error)
    assert calls[2].raw_text == "no json here"


async def test_no_judge_left_is_a_scoring_error(fake: FakeAnthropic, record: GroundTruthRecord) -> None:
    fake.plan = {"claude-sonnet-4-6": [OVERLOADED]}
    with pytest.raises(ScoringError, match="no judge could answer: anthropic:claude-sonnet-4-6"):
        await chain(fake, Clock(), "claude-sonnet-4-6").score("r-0001", record, REPLY)
