"""Score: the judge grades one oracle reply against the diff."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cachetools import LRUCache

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Payload, ReplayInvoked, ReplayScored, RunFailed, make_event, payload_as
from echelon_platform.errors import ConfigError, ScoringError
from echelon_platform.metrics import Metrics
from pipeline_workers.handlers.context import StageContext
from pipeline_workers.handlers.guards import log_skip
from pipeline_workers.handlers.replay_failure import GivesUpOnTheReplay
from pipeline_workers.scoring.base import Scorer, replay_usage, usage_of
from pipeline_workers.scoring.rescore_judges import ScorerChoice


class ScoreHandler(GivesUpOnTheReplay):
    stage = "score"
    topic = ReplayInvoked.TOPIC

    def __init__(
        self, ctx: StageContext, scorer: Scorer, metrics: Metrics, *, choice: ScorerChoice | None = None
    ) -> None:
        self.ctx = ctx
        self.guard = ctx.guard
        self.scorer = scorer
        self.metrics = metrics
        self.choice = choice or ScorerChoice(scorer)
        # Runs this process ended for mixing judges (run → the replay that stopped it, which is handled again
        # after a failed publish): their other replays are not judged, even before the read model knows.
        self._refused: LRUCache[str, str] = LRUCache(4096)
        # The judges this process saw score each run: the log may not hold their scores yet (the writer logs
        # them a moment later), and a mix must not go unseen for that.
        self._judges: LRUCache[str, frozenset[str]] = LRUCache(4096)

    async def _scorer(self, payload: ReplayInvoked) -> Scorer:
        if payload.rescore_of is None:  # only a rescore run may name another methodology or judge
            return self.scorer
        return await self.choice.for_run(payload.run_id)

    async def handle(self, envelope: Envelope, payload: Payload) -> Sequence[Envelope]:
        assert isinstance(payload, ReplayInvoked)
        # A judge call is paid: not for a run that is over, nor again for a score already in the log.
        skip = await self.guard.skip_reason(payload.run_id, [f"verify.replay.scored:{payload.replay_id}"])
        if skip is None and self._refused.get(payload.run_id, payload.replay_id) != payload.replay_id:
            skip = "run stopped: its judges mixed"
        if skip is not None:
            log_skip(self.stage, payload.run_id, skip)
            return []
        # The last call's outcome goes out with the score (one publish); an earlier one with the next request.
        calls = self.ctx.judge_ledger_for(payload, causation_id=envelope.event_id, defer_outcomes=True)
        try:
            scorer = await self._scorer(payload)
        except ConfigError as exc:
            return self.give_up(envelope, payload, f"scoring failed: {exc}")
        try:
            score = await scorer.score(
                payload.replay_id, payload.record, payload.reply, question=payload.question, calls=calls
            )
        except ScoringError as exc:
            logged, _ = calls.remaining()
            return [*logged, *self.give_up(envelope, payload, f"scoring failed: {exc}")]
        except BaseException:
            # Failing for another reason (the bus, the log, a stop): the answers already paid for are still
            # logged, so the retry reuses them instead of paying again.
            await asyncio.shield(calls.publish_remaining())
            raise
        logged, keys = calls.remaining()
        # Every judge call for this replay counts (a fallback judge's failed attempts too), summed in call
        # order: `certificates rederive` recomputes the same figures from the logged calls.
        score = score.model_copy(update={**replay_usage(usage_of(calls), payload), "repeat": payload.repeat})
        self.metrics.judge_tokens.labels(score.scoring_model, "input").inc(score.input_tokens)
        self.metrics.judge_tokens.labels(score.scoring_model, "output").inc(score.output_tokens)
        self.metrics.judge_cost.labels(score.scoring_model).inc(score.cost_usd)
        methodology = calls[-1].methodology_version if calls else None
        scored = make_event(
            ReplayScored(
                run_id=payload.run_id,
                replay_id=payload.replay_id,
                score=score,
                judge_calls=keys,
                methodology_version=methodology,
            ),
            causation_id=envelope.event_id,
        )
        return [*logged, scored, *await self._refuse_mixing(scored, payload.replay_id, score.scoring_model)]

    async def _refuse_mixing(self, scored: Envelope, replay_id: str, judge: str) -> list[Envelope]:
        """With `ECHELON_JUDGE_MIXING=refuse`, the first replay judged by another judge than the run's earlier
        ones ends the run now: the certificate would be refused, so the other replays are not paid for."""
        if self.ctx.settings.judge_mixing != "refuse":
            return []
        run_id = scored.run_id
        logged = await self.ctx.log.run_events(run_id, [ReplayScored.TOPIC])
        judges = {payload_as(e, ReplayScored).score.scoring_model for e in logged} | {judge}
        judges |= self._judges.get(run_id, frozenset())
        self._judges[run_id] = frozenset(judges)
        if len(judges) < 2:
            return []
        reason = (
            f"replays were scored by different judges ({', '.join(sorted(judges))}) and ECHELON_JUDGE_MIXING is "
            "refuse: the run stopped at the first mixed judgement"
        )
        self._refused[run_id] = replay_id
        return [make_event(RunFailed(run_id=run_id, reason=reason, stage=self.stage), causation_id=scored.event_id)]
