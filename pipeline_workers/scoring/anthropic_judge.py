"""An LLM judge on the Anthropic Messages API.

Determinism: the Anthropic SDK 2.x (API version 2026-10-21) no longer accepts ``temperature`` (any
sampling parameter is a 400), so it cannot be pinned to 0. Stability comes instead from a fixed,
hash-verified prompt, itemised yes/no verdicts (ratios are recomputed, never taken from the model)
and a coarse 5-step rubric for reply accuracy.

Retries are ours, not the SDK's (the client is cloned with ``max_retries=0``) so they are bounded,
honour ``retry-after`` and use an injectable sleep. One repair round-trip is made when the judge's
output is not usable JSON. Concurrent calls adapt to the provider (``adaptive_limit``): ``max_concurrency``
is their ceiling, shared with every process on the same endpoint and key when a limiter with Redis is given.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Literal, TypeVar

import anthropic
import structlog
from anthropic.types import MessageParam, TextBlock

from echelon_platform.adapters.adaptive_limit import AdaptiveLimiter, endpoint_id
from echelon_platform.domain.values import GroundTruthRecord, JudgeUsage, OracleReply, ReplayScore
from echelon_platform.errors import ConfigError, ScoringError
from echelon_platform.retry import backoff_delay
from pipeline_workers.scoring.base import CallLog, add_usage, judge_call, make_score, prompt_digest
from pipeline_workers.scoring.judge_limit import classify_judge_failure
from pipeline_workers.scoring.parsing import MAX_CHANGES, MAX_CLAIMS, parse_judge_output, parse_question
from pipeline_workers.scoring.prompts import METHODOLOGY_VERSION, PromptSet, load_prompts

DEFAULT_MODEL = "claude-sonnet-4-6"
# USD per million (input, output) tokens. Exact model ids first; a family name ("sonnet") is the
# fallback for ids not listed. Override with ``price_table`` when prices change.
PRICES: dict[str, tuple[float, float]] = {
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-opus-4-1": (15.0, 75.0),
    "sonnet": (3.0, 15.0),
    "haiku": (1.0, 5.0),
    "opus": (15.0, 75.0),
}
_RETRYABLE_STATUS = frozenset({408, 409, 429})
# 429s with a retry-after a call may wait through before they count as failed attempts: a shared rate
# limit can refuse a call several times while the adaptive limit comes down to the provider's.
MAX_RATE_LIMITED_WAITS = 20
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")
log = structlog.stdlib.get_logger(__name__)


def price_for(model: str, table: Mapping[str, tuple[float, float]] = PRICES) -> tuple[float, float]:
    """(input, output) USD per million tokens for ``model``; ConfigError when the table has no entry."""
    if model in table:
        return table[model]
    families = sorted((key for key in table if key in model), key=len, reverse=True)
    if families:
        return table[families[0]]
    raise ConfigError(f"no price known for judge model {model!r}: pass a price_table entry for it")


def usage_cost(usage: anthropic.types.Usage, prices: tuple[float, float]) -> JudgeUsage:
    # Cache reads/writes are billed as input here: we never enable prompt caching, so they stay 0.
    inputs = usage.input_tokens + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    cost = (inputs * prices[0] + usage.output_tokens * prices[1]) / 1_000_000
    return JudgeUsage(input_tokens=inputs, output_tokens=usage.output_tokens, cost_usd=cost)


class AnthropicScorer:
    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        model: str = DEFAULT_MODEL,
        max_concurrency: int = 4,
        price_table: Mapping[str, tuple[float, float]] | None = None,
        *,
        max_attempts: int = 4,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        judge_max_tokens: int = 4096,
        question_max_tokens: int = 1024,
        prompts: PromptSet | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        limiter: AdaptiveLimiter | None = None,
    ) -> None:
        if max_attempts < 1 or max_concurrency < 1:
            raise ValueError("max_attempts and max_concurrency must be at least 1")
        self._client = client.with_options(max_retries=0)
        self._secrets = [s for s in (client.api_key, client.auth_token) if s]
        self._model = model
        self._prices = price_for(model, PRICES if price_table is None else price_table)
        self._limiter = limiter or AdaptiveLimiter(
            endpoint_id(str(client.base_url)), cap=max_concurrency, classify=classify_judge_failure
        )
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._judge_max_tokens = judge_max_tokens
        self._question_max_tokens = question_max_tokens
        self._prompts = prompts or load_prompts(METHODOLOGY_VERSION)
        self._system = self._prompts.render("system")
        self._sleep = sleep
        self._rng = rng or random.Random()

    @property
    def name(self) -> str:
        return f"anthropic:{self._model}"

    @property
    def methodology_version(self) -> str:
        return self._prompts.version

    def __repr__(self) -> str:  # the client holds the API key; never let it near a log line
        return f"AnthropicScorer(model={self._model!r})"

    async def follow_up_question(
        self, record: GroundTruthRecord, *, calls: CallLog | None = None
    ) -> tuple[str, JudgeUsage]:
        prompt = self._prompts.render("follow_up_question", **_change_fields(record))
        return await self._ask_json(prompt, parse_question, self._question_max_tokens, "question", calls)

    async def score(
        self,
        replay_id: str,
        record: GroundTruthRecord,
        reply: OracleReply,
        *,
        question: str | None = None,
        calls: CallLog | None = None,
    ) -> ReplayScore:
        started = time.perf_counter()
        judged = reply.key_claims[:MAX_CLAIMS]
        prompt = self._prompts.render(
            "judge",
            **_change_fields(record),
            summary=reply.summary or "(empty)",
            claims="\n".join(f"{i}. {claim}" for i, claim in enumerate(judged, 1)) or "(no claims)",
            question=question or "(the question was not recorded; judge whether the answer is accurate)",
            answer=reply.follow_up_response or "(no answer)",
            max_changes=str(MAX_CHANGES),
        )
        expected = len(reply.key_claims)
        verdict, usage = await self._ask_json(
            prompt,
            lambda text: parse_judge_output(text, expected_claims=expected),
            self._judge_max_tokens,
            "score",
            calls,
        )
        return make_score(
            replay_id=replay_id,
            record=record,
            verdict=verdict,
            scoring_model=self.name,
            started=started,
            usage=usage,
            reply=reply,
        )

    async def _ask_json(
        self,
        prompt: str,
        parse: Callable[[str], T],
        max_tokens: int,
        purpose: Literal["question", "score"],
        calls: CallLog | None,
    ) -> tuple[T, JudgeUsage]:
        """Ask once; if the answer cannot be parsed, show the judge its answer and ask once more.
        Each round trip that got an answer is reported to ``calls``."""

        def record(round_trip: int, sent: list[MessageParam], text: str, used: JudgeUsage, ms: float, ok: bool) -> None:
            if calls is not None:
                calls.append(
                    judge_call(
                        judge=self.name,
                        model=self._model,
                        purpose=purpose,
                        round_trip=round_trip,
                        prompt_sha256=prompt_digest(self._system, json.dumps(sent, sort_keys=True)),
                        methodology_version=self._prompts.version,
                        usage=used,
                        latency_ms=ms,
                        raw_text=text,
                        usable=ok,
                    )
                )

        messages: list[MessageParam] = [{"role": "user", "content": prompt}]
        started = time.perf_counter()
        text, usage = await self._call(messages, max_tokens)
        elapsed = (time.perf_counter() - started) * 1000
        try:
            parsed = parse(text)
        except ScoringError as first:
            problem = str(first)
            record(1, messages, text, usage, elapsed, False)
        else:
            record(1, messages, text, usage, elapsed, True)
            return parsed, usage
        repair = self._prompts.render("repair", problem=problem)
        if text.strip():
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": repair}]
        else:  # an empty assistant turn is not allowed: restate the request instead
            messages = [{"role": "user", "content": f"{prompt}\n\n{repair}"}]
        log.info("judge.repair", model=self._model, problem=problem[:200])
        started = time.perf_counter()
        text, more = await self._call(messages, max_tokens)
        elapsed = (time.perf_counter() - started) * 1000
        usage = add_usage(usage, more)
        try:
            parsed = parse(text)
        except ScoringError as second:
            record(2, messages, text, more, elapsed, False)
            raise ScoringError(f"judge output unusable after one repair attempt: {second}") from None
        record(2, messages, text, more, elapsed, True)
        return parsed, usage

    async def _call(self, messages: Iterable[MessageParam], max_tokens: int) -> tuple[str, JudgeUsage]:
        problem = ""
        attempt = waits = 0
        while attempt < self._max_attempts:
            attempt += 1
            retry_after: float | None = None
            try:
                async with self._limiter.slot() as slot:
                    raw = await self._client.messages.with_raw_response.create(
                        model=self._model, max_tokens=max_tokens, system=self._system, messages=messages
                    )
                    slot.headers(raw.headers)
                    response = await raw.parse()
            except anthropic.AuthenticationError as exc:
                raise ScoringError(
                    "Anthropic rejected the API key (401): set a valid ECHELON_ANTHROPIC_API_KEY"
                ) from exc
            except anthropic.APIStatusError as exc:
                problem = self._describe(exc)
                if exc.status_code not in _RETRYABLE_STATUS and exc.status_code < 500:
                    raise ScoringError(f"Anthropic API error: {problem}") from exc
                retry_after = _seconds(exc.response.headers.get("retry-after"))
                if exc.status_code == 429 and retry_after is not None and waits < MAX_RATE_LIMITED_WAITS:
                    # Refused unserved, with a time to come back: waiting as asked is not a failed attempt.
                    waits += 1
                    attempt -= 1
            except anthropic.APIConnectionError as exc:  # includes timeouts
                problem = type(exc).__name__
            else:
                text = "".join(b.text for b in response.content if isinstance(b, TextBlock))
                return text, usage_cost(response.usage, self._prices)
            if attempt < self._max_attempts:
                await self._backoff(attempt, problem, retry_after)
        raise ScoringError(f"Anthropic API still failing after {self._max_attempts} attempts: {problem}")

    async def _backoff(self, attempt: int, problem: str, retry_after: float | None) -> None:
        if retry_after is not None:
            delay = min(self._backoff_max, max(0.0, retry_after))
        else:
            delay = backoff_delay(attempt, self._backoff_base, self._backoff_max, self._rng)
        log.info("judge.retry", model=self._model, attempt=attempt, problem=problem, wait_s=round(delay, 3))
        await self._sleep(delay)

    def _describe(self, exc: anthropic.APIStatusError) -> str:
        detail = f"HTTP {exc.status_code}"
        if exc.type:
            detail += f" {exc.type}"
        if exc.api_message:
            detail += f": {exc.api_message[:200]}"
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return detail


def _change_fields(record: GroundTruthRecord) -> dict[str, str]:
    return {
        "title": record.title,
        "description": record.description or "(none)",
        "files": "\n".join(record.files_changed) or "(none listed)",
        "diff": record.diff_content,
    }


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
