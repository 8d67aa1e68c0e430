"""An ordered list of judges, each behind a circuit breaker: the first available judge that answers wins.

A judge "fails" when its call raises ScoringError (the API kept failing, or its output stayed unusable
after the repair round trip); the next judge is then asked. Which judge scored a replay is recorded on the
score (`scoring_model` is the judge id), and the certify stage flags or refuses certificates that mix
judges (`ECHELON_JUDGE_MIXING`). Every round trip of every judge tried is reported to ``calls``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import structlog

from echelon_platform.domain.values import GroundTruthRecord, JudgeCall, JudgeUsage, OracleReply, ReplayScore
from echelon_platform.errors import BudgetExceeded, ScoringError
from pipeline_workers.scoring.base import Scorer
from pipeline_workers.scoring.breaker import CircuitBreaker

T = TypeVar("T")
log = structlog.stdlib.get_logger(__name__)


class JudgeChain:
    def __init__(self, judges: Sequence[tuple[Scorer, CircuitBreaker]]) -> None:
        if not judges:
            raise ValueError("a judge chain needs at least one judge")
        self.judges = list(judges)

    @property
    def name(self) -> str:
        """The first judge's id: the one that scores while nothing fails."""
        return self.judges[0][0].name

    async def follow_up_question(
        self, record: GroundTruthRecord, *, calls: list[JudgeCall] | None = None
    ) -> tuple[str, JudgeUsage]:
        return await self._first(lambda judge: judge.follow_up_question(record, calls=calls))

    async def score(
        self,
        replay_id: str,
        record: GroundTruthRecord,
        reply: OracleReply,
        *,
        question: str | None = None,
        calls: list[JudgeCall] | None = None,
    ) -> ReplayScore:
        return await self._first(lambda judge: judge.score(replay_id, record, reply, question=question, calls=calls))

    async def _first(self, ask: Callable[[Scorer], Awaitable[T]]) -> T:
        problems: list[str] = []
        for judge, breaker in self.judges:
            if not breaker.try_acquire():
                problems.append(f"{judge.name}: circuit open")
                continue
            try:
                result = await ask(judge)
            except BudgetExceeded:
                breaker.release()  # the judge did not fail: nothing was sent
                raise
            except ScoringError as exc:
                breaker.record_failure()
                problems.append(f"{judge.name}: {exc}")
                log.warning("judge.fallback", judge=judge.name, problem=str(exc)[:200], breaker=breaker.state)
                continue
            except BaseException:
                breaker.record_failure()  # a cancelled or crashed call must not leave a half-open trial held
                raise
            breaker.record_success()
            return result
        raise ScoringError("no judge could answer: " + "; ".join(problems))
