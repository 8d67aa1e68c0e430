"""The scoring port: a judge that asks the follow-up question and grades one oracle reply."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Protocol

from echelon_platform.domain.values import GroundTruthRecord, JudgeUsage, OracleReply, ReplayScore
from pipeline_workers.scoring.parsing import JudgeVerdict


class Scorer(Protocol):
    @property
    def name(self) -> str:
        """The scoring model recorded on every score (e.g. ``claude-sonnet-4-6``)."""
        ...

    async def follow_up_question(self, record: GroundTruthRecord) -> tuple[str, JudgeUsage]: ...

    async def score(
        self,
        replay_id: str,
        record: GroundTruthRecord,
        reply: OracleReply,
        *,
        question: str | None = None,
    ) -> ReplayScore:
        """Grade ``reply``. Pass the follow-up ``question`` the oracle was asked: the reply accuracy is
        judged against it (without it the judge only sees the answer)."""
        ...


def add_usage(a: JudgeUsage, b: JudgeUsage) -> JudgeUsage:
    return JudgeUsage(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cost_usd=a.cost_usd + b.cost_usd,
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
) -> ReplayScore:
    """Assemble a ReplayScore; ``started`` is a ``time.perf_counter()`` reading from before scoring."""
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
        scoring_latency_ms=max(0.0, (time.perf_counter() - started) * 1000.0),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=usage.cost_usd,
        scored_at=datetime.now(UTC),
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
