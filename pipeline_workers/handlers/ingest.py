"""Ingest: fetch ground truth for a requested run and fan out one replay per change."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    JudgeTerms,
    Payload,
    ReplayRequested,
    RunFailed,
    RunIngested,
    RunIngesting,
    RunRequested,
    make_event,
)
from echelon_platform.domain.repeats import replay_id_for
from echelon_platform.domain.repo_refs import SAMPLE_REPO, check_local_repo_allowed
from echelon_platform.errors import IngestError, RequestRejected
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.handlers.context import StageContext
from pipeline_workers.handlers.rescore import ingest_from_log
from pipeline_workers.ingest.base import SourceSpec
from pipeline_workers.ingest.diffs import truncate_diff
from pipeline_workers.ingest.ingester_choice import ingester_for

log = structlog.get_logger(__name__)


class IngestHandler:
    stage = "ingest"
    topic = RunRequested.TOPIC

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx

    async def handle(self, envelope: Envelope, payload: Payload) -> Sequence[Envelope]:
        assert isinstance(payload, RunRequested)
        run_id = payload.run_id
        source = payload.repo_url if payload.rescore is None else f"run {payload.rescore.source_run_id}"
        await self.ctx.publisher.publish(
            make_event(RunIngesting(run_id=run_id, source=source), causation_id=envelope.event_id)
        )
        if payload.rescore is not None:  # the source run's changes, from the log
            return await ingest_from_log(self.ctx.log, run_id, payload.rescore, causation_id=envelope.event_id)
        secrets = await self.ctx.secrets.get(payload.secret_ref)
        spec = SourceSpec(
            repo_url=payload.repo_url,
            limit=payload.limit,
            since=payload.since,
            labels=payload.labels,
            include_unmerged=payload.include_unmerged,
            token=secrets.github_token.get_secret_value() if secrets.github_token else None,
        )
        roots = self.ctx.settings.allowed_repo_roots()
        try:
            if payload.repo_url == SAMPLE_REPO:
                # Bundled, trusted content, cloned where this worker keeps its data (not a client's path).
                sample = await materialise_sample_repo(self.ctx.settings.data_dir.resolve() / "sample-repo")
                spec = spec.model_copy(update={"repo_url": str(sample)})
                roots = [sample]
            else:
                resolved = check_local_repo_allowed(payload.repo_url, roots)
                if resolved is not None:  # read what was checked: a symlink swapped since cannot redirect it
                    spec = spec.model_copy(update={"repo_url": str(resolved)})
            ingester = ingester_for(
                spec.repo_url,
                self.ctx.http,
                github_api_url=self.ctx.settings.github_api_url,
                policy=self.ctx.settings.selection_policy,
                github_max_pages=self.ctx.settings.github_max_pages,
                local_roots=roots,  # where the repository's git data must live, not only its path
            )
            result = await ingester.fetch(spec)
        except (IngestError, RequestRejected) as exc:
            return [self._failed(envelope, f"ingest failed: {exc}")]
        if not result.records:
            return [self._failed(envelope, f"no merged changes found in {payload.repo_url}")]
        events: list[Envelope] = []
        # The run's judge terms travel with each replay (only when set: other requests' events are unchanged).
        terms = (
            JudgeTerms(max_cost_usd=payload.max_cost_usd, cache=payload.judge_cache)
            if payload.max_cost_usd is not None or not payload.judge_cache
            else None
        )
        repeats = payload.repeats
        for index, record in enumerate(result.records):
            record = record.model_copy(update={"diff_content": truncate_diff(record.diff_content)})
            # One replay per (change, repeat); a run without repeats keeps the replays it always had.
            for repeat in range(repeats) if repeats > 1 else [None]:
                replay = ReplayRequested(
                    run_id=run_id,
                    replay_id=replay_id_for(run_id, index, repeat),
                    index=index,
                    record=record,
                    repeat=repeat,
                    oracle=payload.oracle,
                    secret_ref=payload.secret_ref,
                    judge_terms=terms,
                )
                events.append(make_event(replay, causation_id=envelope.event_id))
        events.append(
            make_event(
                RunIngested(
                    run_id=run_id,
                    total=len(result.records) * repeats,
                    ground_truth_source=result.ground_truth_source,
                    commit_range=result.commit_range,
                    selection_policy=result.selection_policy,
                    requested=payload.limit,
                    shortfall=result.shortfall,
                    repeats=repeats if repeats > 1 else None,
                ),
                causation_id=envelope.event_id,
            )
        )
        log.info("ingest.done", run_id=run_id, total=len(result.records), requested=payload.limit)
        return events

    def _failed(self, envelope: Envelope, reason: str) -> Envelope:
        return make_event(
            RunFailed(run_id=envelope.run_id, reason=reason, stage=self.stage), causation_id=envelope.event_id
        )

    def give_up(self, envelope: Envelope, payload: Payload, reason: str) -> Sequence[Envelope]:
        return [self._failed(envelope, f"ingest failed: {reason}")]
