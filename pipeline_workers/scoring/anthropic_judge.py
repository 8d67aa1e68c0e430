"""An LLM judge on the Anthropic Messages API.

Determinism: the API version the requests are written for (2026-10-21, see ``messages_api``) no longer
accepts ``temperature`` (any sampling parameter is a 400), so it cannot be pinned to 0. Stability comes
instead from a fixed, hash-verified prompt, itemised yes/no verdicts (ratios are recomputed, never taken
from the model) and a coarse 5-step rubric for reply accuracy.

Retries are ours (the HTTP client makes none) so they are bounded, honour ``retry-after`` and use an
injectable sleep. One repair round-trip is made when the judge's output is not usable JSON. Concurrent
calls adapt to the provider (``adaptive_limit``): ``max_concurrency`` is their ceiling, shared with every
process on the same endpoint when a limiter with Redis is given.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import orjson
import structlog
from ulid import ULID

from echelon_platform.adapters.adaptive_limit import AdaptiveLimiter, endpoint_id
from echelon_platform.domain.values import (
    GroundTruthRecord,
    JudgeAttempt,
    JudgeCall,
    JudgeUsage,
    OracleReply,
    ReplayScore,
)
from echelon_platform.errors import ConfigError, ScoringError
from echelon_platform.retry import backoff_delay
from pipeline_workers.scoring.base import (
    add_usage,
    cache_key,
    judge_call,
    make_score,
    prompt_digest,
    report_finished,
    report_started,
    reusable_answer,
)
from pipeline_workers.scoring.judge_limit import classify_judge_failure
from pipeline_workers.scoring.messages_api import JudgeStatusError, JudgeUnreachable, MessagesClient
from pipeline_workers.scoring.parsing import MAX_CHANGES, MAX_CLAIMS, parse_judge_output, parse_question
from pipeline_workers.scoring.prompts import METHODOLOGY_VERSION, PromptSet, load_methodology, load_prompts

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
Message = dict[str, str]  # one turn of a Messages request: role and text
log = structlog.stdlib.get_logger(__name__)


def price_for(model: str, table: Mapping[str, tuple[float, float]] = PRICES) -> tuple[float, float]:
    """(input, output) USD per million tokens for ``model``; ConfigError when the table has no entry."""
    if model in table:
        return table[model]
    families = sorted((key for key in table if key in model), key=len, reverse=True)
    if families:
        return table[families[0]]
    raise ConfigError(f"no price known for judge model {model!r}: pass a price_table entry for it")


# Anthropic's prompt-cache prices, as multiples of the input price: a 5-minute cache write, a cache read.
CACHE_WRITE_PRICE = 1.25
CACHE_READ_PRICE = 0.1


def usage_cost(usage: Mapping[str, object], prices: tuple[float, float]) -> JudgeUsage:
    """The cost of one answer from its `usage` object (as the API sends it; a field it leaves out counts 0)."""
    tokens, output = _count(usage, "input_tokens"), _count(usage, "output_tokens")
    written, read = _count(usage, "cache_creation_input_tokens"), _count(usage, "cache_read_input_tokens")
    billed_input = tokens + written * CACHE_WRITE_PRICE + read * CACHE_READ_PRICE
    cost = (billed_input * prices[0] + output * prices[1]) / 1_000_000
    return JudgeUsage(
        input_tokens=tokens + written + read,
        output_tokens=output,
        cost_usd=cost,
        cache_read_tokens=read,
        cache_write_tokens=written,
    )


def _count(usage: Mapping[str, object], field: str) -> int:
    value = usage.get(field)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def answer_of(message: object) -> tuple[str, Mapping[str, object]]:
    """The text blocks and the usage of a Messages API answer, read from its JSON (the SDK's models of it
    cost more CPU than the rest of the call); anything malformed reads as no text or no usage."""
    if not isinstance(message, dict):
        return "", {}
    blocks = message.get("content")
    text = "".join(
        b["text"]
        for b in (blocks if isinstance(blocks, list) else ())
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )
    usage = message.get("usage")
    return text, usage if isinstance(usage, dict) else {}


class AnthropicScorer:
    def __init__(
        self,
        client: MessagesClient,
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
        prompt_caching: bool = True,
    ) -> None:
        if max_attempts < 1 or max_concurrency < 1:
            raise ValueError("max_attempts and max_concurrency must be at least 1")
        self._client = client
        self._secrets = [client.api_key] if client.api_key else []
        self._model = model
        self._prices = price_for(model, PRICES if price_table is None else price_table)
        self._limiter = limiter or AdaptiveLimiter(
            endpoint_id(client.endpoint), cap=max_concurrency, classify=classify_judge_failure
        )
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._judge_max_tokens = judge_max_tokens
        self._question_max_tokens = question_max_tokens
        self._prompts = prompts or load_prompts(METHODOLOGY_VERSION)
        self._system = self._prompts.render("system")
        # The system prompt is the same for every request: marked for Anthropic's prompt cache, it is billed
        # at the cache-read price after the first request (when it is long enough for the model to cache).
        block: dict[str, object] = {"type": "text", "text": self._system}
        if prompt_caching:
            block["cache_control"] = {"type": "ephemeral"}
        self._system_blocks = [block]
        self._methodology_sha256 = _methodology_hash(self._prompts)
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
        self, record: GroundTruthRecord, *, calls: list[JudgeCall] | None = None
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
        calls: list[JudgeCall] | None = None,
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
        calls: list[JudgeCall] | None,
    ) -> tuple[T, JudgeUsage]:
        """Ask once; if the answer cannot be parsed, show the judge its answer and ask once more.
        Every HTTP attempt is reported to ``calls`` (before it is sent, and when it ends)."""
        messages: list[Message] = [{"role": "user", "content": prompt}]
        text, usage = await self._round_trip(1, messages, max_tokens, purpose, calls, parse)
        try:
            return parse(text), usage
        except ScoringError as first:
            problem = str(first)
        repair = self._prompts.render("repair", problem=problem)
        if text.strip():
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": repair}]
        else:  # an empty assistant turn is not allowed: restate the request instead
            messages = [{"role": "user", "content": f"{prompt}\n\n{repair}"}]
        log.info("judge.repair", model=self._model, problem=problem[:200])
        text, more = await self._round_trip(2, messages, max_tokens, purpose, calls, parse)
        usage = add_usage(usage, more)
        try:
            return parse(text), usage
        except ScoringError as second:
            raise ScoringError(f"judge output unusable after one repair attempt: {second}") from None

    async def _round_trip(
        self,
        round_trip: int,
        messages: list[Message],
        max_tokens: int,
        purpose: Literal["question", "score"],
        calls: list[JudgeCall] | None,
        parse: Callable[[str], object],
    ) -> tuple[str, JudgeUsage]:
        """One request/answer exchange: from the log when it already holds this exact answer, else asked
        (with retries). The call is reported to ``calls`` with whether ``parse`` accepts its text."""
        sent = json.dumps(messages, sort_keys=True)
        digest = prompt_digest(self._system, sent)
        key = cache_key(self._methodology_sha256, self._model, digest)

        def call(text: str, usage: JudgeUsage, ms: float, **attempt: object) -> JudgeCall:
            try:
                parse(text)
            except ScoringError:
                usable = False
            else:
                usable = True
            return judge_call(
                judge=self.name,
                model=self._model,
                purpose=purpose,
                round_trip=round_trip,
                prompt_sha256=digest,
                methodology_version=self._prompts.version,
                usage=usage,
                latency_ms=ms,
                raw_text=text,
                usable=usable,
                cache_key=key,
                **attempt,
            )

        reused = await reusable_answer(calls, key)
        if reused is not None:
            log.info("judge.reused", model=self._model, purpose=purpose, call_key=reused.call_key)
            await report_finished(calls, call(reused.raw_text, JudgeUsage(), 0.0, reused_from=reused.call_key))
            return reused.raw_text, JudgeUsage()
        bound = self._cost_bound(sent, max_tokens)
        problem = ""
        attempt = waits = requests = 0
        while attempt < self._max_attempts:
            attempt += 1
            requests += 1
            attempt_id = str(ULID())
            await report_started(
                calls,
                JudgeAttempt(
                    attempt_id=attempt_id,
                    judge=self.name,
                    model=self._model,
                    purpose=purpose,
                    round_trip=round_trip,
                    attempt=requests,
                    prompt_sha256=digest,
                    methodology_version=self._prompts.version,
                    max_cost_usd=bound,
                ),
            )
            started = time.perf_counter()
            outcome = await self._call(messages, max_tokens)
            elapsed = (time.perf_counter() - started) * 1000
            if isinstance(outcome, _Answer):
                await report_finished(
                    calls,
                    call(outcome.text, outcome.usage, elapsed, attempt_id=attempt_id, attempt=requests, status=200),
                )
                return outcome.text, outcome.usage
            # A failed attempt is logged too (nothing billed for it, but it was sent and counts as a request).
            await report_finished(
                calls,
                call(
                    "",
                    JudgeUsage(),
                    elapsed,
                    attempt_id=attempt_id,
                    attempt=requests,
                    status=outcome.status,
                    error=outcome.problem[:500],
                ),
            )
            problem = outcome.problem
            if outcome.final:
                raise ScoringError(f"Anthropic API error: {problem}")
            if outcome.status == 429 and outcome.retry_after is not None and waits < MAX_RATE_LIMITED_WAITS:
                # Refused unserved, with a time to come back: waiting as asked is not a failed attempt (the
                # request is logged all the same: every request sent is).
                waits += 1
                attempt -= 1
            if attempt < self._max_attempts:
                await self._backoff(attempt, problem, outcome.retry_after)
        raise ScoringError(f"Anthropic API still failing after {self._max_attempts} attempts: {problem}")

    def _cost_bound(self, sent: str, max_tokens: int) -> float:
        """What one request can cost at most, for the run's budget: input at one token per 3 characters (a
        safe side of the usual ~4) plus every output token it may produce, at the uncached price."""
        tokens_in = (len(self._system) + len(sent)) // 3 + 1
        return (tokens_in * self._prices[0] + max_tokens * self._prices[1]) / 1_000_000

    async def _call(self, messages: list[Message], max_tokens: int) -> _Answer | _Failure:
        """One HTTP request (the only place one is sent)."""
        request = {"model": self._model, "max_tokens": max_tokens, "system": self._system_blocks, "messages": messages}
        try:
            async with self._limiter.slot() as slot:
                answer = await self._client.create(request)
                slot.headers(answer.headers)
        except JudgeStatusError as exc:
            if exc.status == 401:
                raise ScoringError(
                    "Anthropic rejected the API key (401): set a valid ECHELON_ANTHROPIC_API_KEY"
                ) from None
            final = exc.status not in _RETRYABLE_STATUS and exc.status < 500
            return _Failure(self._describe(exc), exc.status, final, _seconds(exc.headers.get("retry-after")))
        except JudgeUnreachable as exc:  # includes time-outs
            return _Failure(str(exc), None, False, None)
        try:
            message = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return _Failure("the answer is not JSON", None, False, None)
        text, usage = answer_of(message)
        return _Answer(text, usage_cost(usage, self._prices))

    async def _backoff(self, attempt: int, problem: str, retry_after: float | None) -> None:
        if retry_after is not None:
            delay = min(self._backoff_max, max(0.0, retry_after))
        else:
            delay = backoff_delay(attempt, self._backoff_base, self._backoff_max, self._rng)
        log.info("judge.retry", model=self._model, attempt=attempt, problem=problem, wait_s=round(delay, 3))
        await self._sleep(delay)

    def _describe(self, exc: JudgeStatusError) -> str:
        detail = f"HTTP {exc.status}"
        if exc.kind:
            detail += f" {exc.kind}"
        if exc.api_message:
            detail += f": {exc.api_message[:200]}"
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return detail


@dataclass(frozen=True, slots=True)
class _Answer:
    text: str
    usage: JudgeUsage


@dataclass(frozen=True, slots=True)
class _Failure:
    problem: str
    status: int | None  # None: no HTTP answer (timeout, connection)
    final: bool  # not worth retrying (a 4xx other than 408/409/429)
    retry_after: float | None


def _change_fields(record: GroundTruthRecord) -> dict[str, str]:
    return {
        "title": record.title,
        "description": record.description or "(none)",
        "files": "\n".join(record.files_changed) or "(none listed)",
        "diff": record.diff_content,
    }


def _methodology_hash(prompts: PromptSet) -> str:
    """The released methodology's hash when these are its packaged prompts, else a hash of the templates."""
    try:
        if load_prompts(prompts.version) == prompts:
            return load_methodology(prompts.version).sha256
    except ConfigError:
        pass
    return prompt_digest(prompts.version, *(f"{name}\n{text}" for name, text in sorted(prompts.templates.items())))


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
