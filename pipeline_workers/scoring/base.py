"""The scoring port: a judge that asks the follow-up question and grades one oracle reply."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, NamedTuple, Protocol

from echelon_platform.domain.values import (
    MAX_JUDGE_TEXT_CHARS,
    GroundTruthRecord,
    JudgeAttempt,
    JudgeCall,
    JudgeUsage,
    OracleReply,
    ReplayScore,
)
from pipeline_workers.scoring.parsing import JudgeVerdict


class CallLog(list[JudgeCall]):
    """Where a scorer reports its judge calls: the list holds each finished call, in order.

    The stages' log (`pipeline_workers/handlers/judge_ledger.py`) also publishes each request before it is
    sent and each call as it ends, looks answers up in the log (the answer cache) and keeps the run's
    budget; this base does none of that (tests, `rederive`). A plain list works too: it only collects."""

    async def started(self, attempt: JudgeAttempt) -> None:
        """A request is about to be sent: may raise BudgetExceeded (nothing is sent then)."""

    async def finished(self, call: JudgeCall) -> None:
        self.append(call)

    async def reusable(self, cache_key: str) -> Reusable | None:
        """A usable answer the log already holds for exactly this request, or None."""
        return None


class Reusable(NamedTuple):
    call_key: str  # the logged call the answer was first given in
    raw_text: str


async def report_started(calls: list[JudgeCall] | None, attempt: JudgeAttempt) -> None:
    if isinstance(calls, CallLog):
        await calls.started(attempt)


async def report_finished(calls: list[JudgeCall] | None, call: JudgeCall) -> None:
    if isinstance(calls, CallLog):
        await calls.finished(call)
    elif calls is not None:
        calls.append(call)


async def reusable_answer(calls: list[JudgeCall] | None, cache_key: str) -> Reusable | None:
    return await calls.reusable(cache_key) if isinstance(calls, CallLog) else None


def cache_key(methodology_sha256: str, model: str, prompt_sha256: str) -> str:
    """What identifies one judge answer: the methodology (its hash), the model and the exact prompt sent."""
    return prompt_digest("judge-answer/1", methodology_sha256, model, prompt_sha256)


class Scorer(Protocol):
    @property
    def name(self) -> str:
        """The judge id recorded on every score (e.g. ``anthropic:claude-sonnet-4-6``)."""
        ...

    async def follow_up_question(
        self, record: GroundTruthRecord, *, calls: list[JudgeCall] | None = None
    ) -> tuple[str, JudgeUsage]: ...

    async def score(
        self,
        replay_id: str,
        record: GroundTruthRecord,
        reply: OracleReply,
        *,
        question: str | None = None,
        calls: list[JudgeCall] | None = None,
    ) -> ReplayScore:
        """Grade ``reply``. Pass the follow-up ``question`` the oracle was asked: the reply accuracy is
        judged against it (without it the judge only sees the answer). Every round trip with the judge is
        appended to ``calls``, successful or not."""
        ...


def prompt_digest(*parts: str) -> str:
    """SHA-256 of what was sent (system prompt and messages), parts separated so they cannot run together."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part.encode("utf-8")).to_bytes(8, "big"))
        digest.update(part.encode("utf-8"))
    return digest.hexdigest()


def judge_call(
    *,
    judge: str,
    model: str,
    purpose: Literal["question", "score"],
    round_trip: int,
    prompt_sha256: str,
    methodology_version: str,
    usage: JudgeUsage,
    latency_ms: float,
    raw_text: str,
    usable: bool,
    **attempt: object,
) -> JudgeCall:
    return JudgeCall(
        judge=judge,
        model=model,
        purpose=purpose,
        round_trip=round_trip,
        prompt_sha256=prompt_sha256,
        methodology_version=methodology_version,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=usage.cost_usd,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        latency_ms=round(max(0.0, latency_ms), 3),
        raw_text=raw_text[:MAX_JUDGE_TEXT_CHARS],
        raw_truncated=len(raw_text) > MAX_JUDGE_TEXT_CHARS,
        usable=usable,
        **attempt,
    )


def usage_of(calls: Iterable[JudgeCall]) -> JudgeUsage:
    """The summed usage of some judge calls, in order (the same float sums wherever it is recomputed)."""
    total = JudgeUsage()
    for call in calls:
        total = add_usage(
            total, JudgeUsage(input_tokens=call.input_tokens, output_tokens=call.output_tokens, cost_usd=call.cost_usd)
        )
    return total


def add_usage(a: JudgeUsage, b: JudgeUsage) -> JudgeUsage:
    return JudgeUsage(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cost_usd=a.cost_usd + b.cost_usd,
        cache_read_tokens=a.cache_read_tokens + b.cache_read_tokens,
        cache_write_tokens=a.cache_write_tokens + b.cache_write_tokens,
    )


def make_score(
    *,
    replay_id: str,
    record: GroundTruthRecord,
    verdict: JudgeVerdict,
    scoring_model: str,
    started: float,
    usage: JudgeUsage,
    reply: OracleReply | None = None,
    latency_ms: float | None = None,
    scored_at: datetime | None = None,
) -> ReplayScore:
    """Assemble a ReplayScore; ``started`` is a ``time.perf_counter()`` reading from before scoring
    (``latency_ms`` and ``scored_at``, when given, are used as they are: re-deriving a logged score)."""
    flags = verdict.claims.flags
    return ReplayScore(
        replay_id=replay_id,
        ground_truth_id=record.id,
        precision=verdict.claims.value,
        recall=verdict.changes.value,
        reply_accuracy=verdict.reply_accuracy,
        claims_total=verdict.claims.total,
        claims_supported=verdict.claims.hits,
        changes_total=verdict.changes.total,
        changes_surfaced=verdict.changes.hits,
        scoring_model=scoring_model,
        # A measured latency keeps microseconds (more digits are noise in every view); a logged one is kept
        # exactly, so re-deriving an older certificate gives the same bytes.
        scoring_latency_ms=latency_ms
        if latency_ms is not None
        else round(max(0.0, (time.perf_counter() - started) * 1000.0), 3),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=usage.cost_usd,
        scored_at=scored_at or datetime.now(UTC),
        claim_supported=list(flags) if flags is not None else None,
        claim_confidences=claim_confidences(reply) if reply is not None and flags is not None else None,
    )


def claim_confidences(reply: OracleReply) -> list[float] | None:
    """The oracle's confidence per key claim: ``metadata.claim_confidences``, a list of numbers in [0, 1]
    aligned with ``key_claims``. Anything else (wrong length, out of range, not numbers) is ignored: None."""
    raw = (reply.metadata or {}).get("claim_confidences")
    if not isinstance(raw, list) or len(raw) != len(reply.key_claims) or not raw:
        return None
    out: list[float] = []
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        number = float(value)
        if not math.isfinite(number) or not 0.0 <= number <= 1.0:
            return None
        out.append(number)
    return out


class QuestionUsage(Protocol):
    """What the invoke stage recorded of the follow-up question's judge calls."""

    @property
    def question_input_tokens(self) -> int: ...
    @property
    def question_output_tokens(self) -> int: ...
    @property
    def question_cost_usd(self) -> float: ...


def replay_usage(scoring: JudgeUsage, question: QuestionUsage) -> dict[str, int | float]:
    """A replay score's tokens and cost: its scoring calls plus its question's (one formula, used by the
    score stage and by `certificates rederive`)."""
    return {
        "input_tokens": scoring.input_tokens + question.question_input_tokens,
        "output_tokens": scoring.output_tokens + question.question_output_tokens,
        "cost_usd": round(scoring.cost_usd + question.question_cost_usd, 8),
    }
