"""Score: the judge grades one oracle reply against the diff."""

from __future__ import annotations

from collections.abc import Sequence

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Payload, ReplayInvoked, ReplayScored, make_event
from echelon_platform.errors import ScoringError
from echelon_platform.metrics import Metrics
from pipeline_workers.handlers.guards import PaidWorkGuard, log_skip
from pipeline_workers.handlers.judge_log import judge_events
from pipeline_workers.handlers.replay_failure import GivesUpOnTheReplay
from pipeline_workers.scoring.base import CallLog, Scorer, replay_usage, usage_of


class ScoreHandler(GivesUpOnTheReplay):
    stage = "score"
    topic = ReplayInvoked.TOPIC

    def __init__(self, guard: PaidWorkGuard, scorer: Scorer, metrics: Metrics) -> None:
        self.guard = guard
        self.scorer = scorer
        self.metrics = metrics

    async def handle(self, envelope: Envelope, payload: Payload) -> Sequence[Envelope]:
        assert isinstance(payload, ReplayInvoked)
        # A judge call is paid: not for a run that is over, nor again for a score already in the log.
        skip = await self.guard.skip_reason(payload.run_id, [f"verify.replay.scored:{payload.replay_id}"])
        if skip is not None:
            log_skip(self.stage, payload.run_id, skip)
            return []
        calls: CallLog = []
        try:
            score = await self.scorer.score(
                payload.replay_id, payload.record, payload.reply, question=payload.question, calls=calls
            )
        except ScoringError as exc:
            logged, _ = judge_events(payload.run_id, payload.replay_id, calls, causation_id=envelope.event_id)
            return [*logged, *self.give_up(envelope, payload, f"scoring failed: {exc}")]
        logged, keys = judge_events(payload.run_id, payload.replay_id, calls, causation_id=envelope.event_id)
        # Every judge call for this replay counts (a fallback judge's failed attempts too), summed in call
        # order: `certificates rederive` recomputes the same figures from the logged calls.
        score = score.model_copy(update=replay_usage(usage_of(calls), payload))
        self.metrics.judge_tokens.labels(score.scoring_model, "input").inc(score.input_tokens)
        self.metrics.judge_tokens.labels(score.scoring_model, "output").inc(score.output_tokens)
        self.metrics.judge_cost.labels(score.scoring_model).inc(score.cost_usd)
        methodology = calls[-1].methodology_version if calls else None
        return [
            *logged,
            make_event(
                ReplayScored(
                    run_id=payload.run_id,
                    replay_id=payload.replay_id,
                    score=score,
                    judge_calls=keys,
                    methodology_version=methodology,
                ),
                causation_id=envelope.event_id,
            ),
        ]
