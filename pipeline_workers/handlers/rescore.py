"""A rescore run: the ingest and invoke stages read what the source run logged instead of git and the oracle.

A rescore is a run of its own (`run.requested` with `rescore` set), so its scores, its certificate and its
signature go through the score and certify stages and the single writer like any run's; only where its
ground truth and oracle replies come from differs. Ingest copies the source run's replays (same changes,
same repeats); invoke copies each logged reply. The oracle is never called, and neither is the judge's
follow-up question (the reply answers the question the source run asked, logged with it).
"""

from __future__ import annotations

from collections.abc import Sequence

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    ReplayFailed,
    ReplayInvoked,
    ReplayRequested,
    RescoreSpec,
    RunFailed,
    RunIngested,
    make_event,
    payload_as,
)
from echelon_platform.domain.repeats import replay_id_for
from echelon_platform.ports.log import LogReader

SOURCE_TOPICS = (RunIngested.TOPIC, ReplayRequested.TOPIC)
REPLY_TOPICS = (ReplayInvoked.TOPIC, ReplayFailed.TOPIC)


async def ingest_from_log(store: LogReader, run_id: str, spec: RescoreSpec, *, causation_id: str) -> list[Envelope]:
    """The rescore's replays: one per replay of the source run, over the same changes and repeats."""
    events = await store.run_events(spec.source_run_id, SOURCE_TOPICS)
    ingested = next((payload_as(e, RunIngested) for e in events if e.topic == RunIngested.TOPIC), None)
    if ingested is None:
        return [_failed(run_id, f"rescore: run {spec.source_run_id} has no ground truth in the log", causation_id)]
    out: list[Envelope] = []
    for event in events:
        if event.topic != ReplayRequested.TOPIC:
            continue
        source = payload_as(event, ReplayRequested)
        replay = ReplayRequested(
            run_id=run_id,
            replay_id=replay_id_for(run_id, source.index, source.repeat),
            index=source.index,
            record=source.record,
            repeat=source.repeat,
            rescore_of=source.replay_id,
            judge_terms=source.judge_terms,  # the source run's budget and cache terms hold for its rescore
        )
        out.append(make_event(replay, causation_id=causation_id))
    if len(out) != ingested.total:
        reason = f"rescore: run {spec.source_run_id} logs {len(out)} of its {ingested.total} replays"
        return [_failed(run_id, reason, causation_id)]
    summary = ingested.model_copy(update={"run_id": run_id})
    return [*out, make_event(summary, causation_id=causation_id)]


async def invoke_from_log(
    store: LogReader, source_run: str, payload: ReplayRequested, *, causation_id: str
) -> Sequence[Envelope]:
    """The source replay's logged reply as this replay's `replay.invoked`, or its logged failure."""
    events = await store.run_events(source_run, REPLY_TOPICS)
    invoked = [payload_as(e, ReplayInvoked) for e in events if e.topic == ReplayInvoked.TOPIC]
    reply = next((i for i in invoked if i.replay_id == payload.rescore_of), None)
    if reply is not None:
        copied = ReplayInvoked(
            run_id=payload.run_id,
            replay_id=payload.replay_id,
            record=payload.record,
            question=reply.question,
            reply=reply.reply,
            latency_ms=reply.latency_ms,
            # The question was asked (and paid) by the source run: nothing of it is this run's cost.
            repeat=payload.repeat,
            rescore_of=payload.rescore_of,
            judge_terms=payload.judge_terms,
        )
        return [make_event(copied, causation_id=causation_id)]
    failures = [payload_as(e, ReplayFailed) for e in events if e.topic == ReplayFailed.TOPIC]
    failure = next((f for f in failures if f.replay_id == payload.rescore_of), None)
    reason = (
        f"the oracle failed in run {source_run}: {failure.reason}"
        if failure is not None
        else f"run {source_run} logs no reply for replay {payload.rescore_of}"
    )
    failed = ReplayFailed(
        run_id=payload.run_id,
        replay_id=payload.replay_id,
        ground_truth_id=payload.record.id,
        stage="invoke",
        reason=reason[:2000],
    )
    return [make_event(failed, causation_id=causation_id)]


def _failed(run_id: str, reason: str, causation_id: str) -> Envelope:
    return make_event(RunFailed(run_id=run_id, reason=reason, stage="ingest"), causation_id=causation_id)
