from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx

from echelon_platform.domain.values import GroundTruthRecord, OracleReply
from echelon_platform.errors import ConfigError, ScoringError
from pipeline_workers.scoring.anthropic_judge import AnthropicScorer, answer_of, price_for, usage_cost

from .helpers import SleepRecorder, anthropic_error, anthropic_message, anthropic_via_respx

API_KEY = "sk-ant-api03-Zx9YwV8uT7sR6qP5oN4mL3kJ2iH1gF0eD-cBaAA"
MESSAGES = "https://api.anthropic.com/v1/messages"
REPLY = OracleReply(
    summary="Adds truncate() to textkit.text and exports it.",
    key_claims=["Adds function truncate", "Adds a cache", "Exports word_count"],
    follow_up_response="It returns text unchanged when it fits, otherwise cuts it and appends '...'.",
)
VERDICT = {
    "claims": [
        {"claim": "Adds function truncate", "supported": True},
        {"claim": "Adds a cache", "supported": False},
        {"claim": "Exports word_count", "supported": True},
    ],
    "changes": [
        {"change": "New truncate(text, width, suffix) helper", "surfaced": True},
        {"change": "__init__ exports truncate and word_count", "surfaced": True},
        {"change": "__all__ updated", "surfaced": False},
    ],
    "score": 0.8,
}


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(assert_all_called=False)


def scorer(router: respx.MockRouter, sleeps: SleepRecorder, **kw: Any) -> AnthropicScorer:
    return AnthropicScorer(anthropic_via_respx(router, api_key=API_KEY), sleep=sleeps, **kw)


def body(call: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(call.request.content)
    return data


async def test_scores_a_reply(router: respx.MockRouter, sleeps: SleepRecorder, record: GroundTruthRecord) -> None:
    route = router.post(MESSAGES).mock(
        return_value=httpx.Response(
            200, json=anthropic_message(json.dumps(VERDICT), input_tokens=2000, output_tokens=300)
        )
    )
    result = await scorer(router, sleeps).score("run-1-0003", record, REPLY, question="What does truncate return?")

    assert (result.claims_supported, result.claims_total) == (2, 3)
    assert result.precision == pytest.approx(2 / 3)
    assert (result.changes_surfaced, result.changes_total) == (2, 3)
    assert result.recall == pytest.approx(2 / 3)
    assert result.reply_accuracy == 0.75  # 0.8 snapped to the rubric
    assert result.scoring_model == "anthropic:claude-sonnet-4-6"  # the judge id
    assert (result.input_tokens, result.output_tokens) == (2000, 300)
    assert result.cost_usd == pytest.approx((2000 * 3.0 + 300 * 15.0) / 1e6)
    assert result.scoring_latency_ms > 0 and result.scored_at.tzinfo is not None

    sent = body(route.calls.last)
    assert sent["model"] == "claude-sonnet-4-6"
    assert "temperature" not in sent  # rejected by the 2026-10-21 API version
    assert "impartial judge" in sent["system"][0]["text"]
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}  # the static part, for the prompt cache
    prompt = sent["messages"][0]["content"]
    assert "1. Adds function truncate\n2. Adds a cache\n3. Exports word_count" in prompt
    assert "What does truncate return?" in prompt and record.diff_content in prompt
    assert API_KEY in route.calls.last.request.headers.get("authorization", "") + route.calls.last.request.headers.get(
        "x-api-key", ""
    )


async def test_follow_up_question(router: respx.MockRouter, sleeps: SleepRecorder, record: GroundTruthRecord) -> None:
    router.post(MESSAGES).mock(
        return_value=httpx.Response(
            200,
            json=anthropic_message(
                '```json\n{"question": "What does truncate return when the text is longer than width?"}\n```',
                input_tokens=900,
                output_tokens=40,
            ),
        )
    )
    question, usage = await scorer(router, sleeps, model="claude-haiku-4-5").follow_up_question(record)
    assert question == "What does truncate return when the text is longer than width?"
    assert (usage.input_tokens, usage.output_tokens) == (900, 40)
    assert usage.cost_usd == pytest.approx((900 * 1.0 + 40 * 5.0) / 1e6)


async def test_invalid_json_gets_one_repair_round_trip(
    router: respx.MockRouter, sleeps: SleepRecorder, record: GroundTruthRecord
) -> None:
    bad = "I'd rate the claims as mostly supported: claims 1 and 3 hold, claim 2 does not."
    route = router.post(MESSAGES).mock(
        side_effect=[
            httpx.Response(200, json=anthropic_message(bad, input_tokens=2000, output_tokens=50)),
            httpx.Response(200, json=anthropic_message(json.dumps(VERDICT), input_tokens=2100, output_tokens=280)),
        ]
    )
    result = await scorer(router, sleeps).score("r1", record, REPLY, question="q?")

    assert route.call_count == 2
    repair = body(route.calls[1])["messages"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[1]["content"] == bad
    assert "could not be used: judge output contains no JSON object" in repair[2]["content"]
    assert (result.input_tokens, result.output_tokens) == (4100, 330)  # both calls are paid for
    assert result.claims_supported == 2
    assert sleeps.calls == []


async def test_second_invalid_answer_is_a_scoring_error(
    router: respx.MockRouter, sleeps: SleepRecorder, record: GroundTruthRecord
) -> None:
    route = router.post(MESSAGES).mock(
        return_value=httpx.Response(200, json=anthropic_message('{"claims": [{"claim": "x"}]}'))
    )
    with pytest.raises(ScoringError, match="unusable after one repair attempt"):
        await scorer(router, sleeps).score("r1", record, REPLY, question="q?")
    assert route.call_count == 2


async def test_rate_limit_then_success(
    router: respx.MockRouter, sleeps: SleepRecorder, record: GroundTruthRecord
) -> None:
    route = router.post(MESSAGES).mock(
        side_effect=[
            httpx.Response(
                429,
                json=anthropic_error("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
                headers={"retry-after": "3", "anthropic-ratelimit-requests-remaining": "0"},
            ),
            httpx.Response(200, json=anthropic_message(json.dumps(VERDICT))),
        ]
    )
    result = await scorer(router, sleeps).score("r1", record, REPLY, question="q?")
    assert route.call_count == 2
    assert sleeps.calls == [3.0]
    assert result.claims_total == 3


async def test_overload_retries_are_bounded(
    router: respx.MockRouter, sleeps: SleepRecorder, record: GroundTruthRecord
) -> None:
    route = router.post(MESSAGES).mock(
        return_value=httpx.Response(529, json=anthropic_error("overloaded_error", "Overloaded"))
    )
    with pytest.raises(ScoringError, match="still failing after 3 attempts: HTTP 529 overloaded_error: Overloaded"):
        await scorer(router, sleeps, max_attempts=3).score("r1", record, REPLY)
    assert route.call_count == 3
    assert len(sleeps.calls) == 2 and all(0 < s <= 30 for s in sleeps.calls)


async def test_bad_key_fails_fast_without_leaking_it(
    router: respx.MockRouter, sleeps: SleepRecorder, record: GroundTruthRecord
) -> None:
    route = router.post(MESSAGES).mock(
        return_value=httpx.Response(
            401, json=anthropic_error("authentication_error", f"invalid x-api-key {API_KEY[:12]}")
        )
    )
    judge = scorer(router, sleeps)
    with pytest.raises(ScoringError) as info:
        await judge.score("r1", record, REPLY)
    assert "ECHELON_ANTHROPIC_API_KEY" in str(info.value)
    assert API_KEY not in str(info.value) and API_KEY not in repr(judge)
    assert route.call_count == 1


async def test_bad_request_is_not_retried(
    router: respx.MockRouter, sleeps: SleepRecorder, record: GroundTruthRecord
) -> None:
    route = router.post(MESSAGES).mock(
        return_value=httpx.Response(400, json=anthropic_error("invalid_request_error", "prompt is too long"))
    )
    with pytest.raises(ScoringError, match="HTTP 400 invalid_request_error: prompt is too long"):
        await scorer(router, sleeps).score("r1", record, REPLY)
    assert route.call_count == 1 and sleeps.calls == []


async def test_concurrency_is_bounded(
    router: respx.MockRouter, sleeps: SleepRecorder, record: GroundTruthRecord
) -> None:
    in_flight = peak = 0

    async def slow_judge(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(200, json=anthropic_message(json.dumps(VERDICT)))

    router.post(MESSAGES).mock(side_effect=slow_judge)
    judge = scorer(router, sleeps, max_concurrency=2)
    results = await asyncio.gather(*(judge.score(f"r{i}", record, REPLY) for i in range(6)))
    assert len(results) == 6
    assert peak == 2


def test_prices() -> None:
    assert price_for("claude-sonnet-4-6") == (3.0, 15.0)
    assert price_for("claude-opus-4-9") == (15.0, 75.0)  # family fallback
    assert price_for("claude-haiku-9", {"haiku": (0.5, 2.0)}) == (0.5, 2.0)
    with pytest.raises(ConfigError, match="no price known"):
        price_for("gpt-4o")


def test_an_answer_is_read_from_the_messages_json_as_the_api_sends_it() -> None:
    message = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "Look at the diff first.", "signature": "c2ln"},
            {"type": "text", "text": "What does "},
            {"type": "text", "text": "truncate() return for short text?"},
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 1200,
            "output_tokens": 40,
            "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": None,
            "service_tier": "standard",
        },
    }
    text, usage = answer_of(message)
    assert text == "What does truncate() return for short text?"
    cost = usage_cost(usage, (3.0, 15.0))
    assert (cost.input_tokens, cost.output_tokens, cost.cache_write_tokens, cost.cache_read_tokens) == (
        2200,
        40,
        1000,
        0,
    )
    assert cost.cost_usd == pytest.approx((1200 + 1000 * 1.25) * 3.0 / 1e6 + 40 * 15.0 / 1e6)


@pytest.mark.parametrize(
    "message",
    [
        None,
        [],
        "text",
        {},
        {"content": "not a list"},
        {"content": [{"type": "text"}], "usage": "none"},
        {"content": [{"type": "text", "text": 7}], "usage": {"input_tokens": -3, "output_tokens": True}},
    ],
)
def test_a_malformed_answer_reads_as_no_text_and_no_cost(message: object) -> None:
    text, usage = answer_of(message)
    assert text == ""
    cost = usage_cost(usage, (3.0, 15.0))
    assert (cost.input_tokens, cost.output_tokens, cost.cost_usd) == (0, 0, 0.0)
