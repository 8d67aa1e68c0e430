"""What a run's certificate is built from, folded once from its events: used by certify and by rederive.

The rule, in log order: a replay's last score is its score; a replay's last failure is its failure, and a
replay with a score has none (it failed on an earlier attempt, then was scored). Each replay thus has at
most one outcome, so `outcomes` counts replays, which is what the ingest total is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    ReplayFailed,
    ReplayScored,
    RunIngested,
    RunRequested,
    payload_as,
)
from echelon_platform.domain.values import FailedReplay

# The topics run_inputs reads (a store can be asked for just these).
INPUT_TOPICS = (
    RunRequested.TOPIC,
    RunIngested.TOPIC,
    ReplayScored.TOPIC,
    ReplayFailed.TOPIC,
)


@dataclass(frozen=True)
class RunInputs:
    request: RunRequested | None
    ingested: RunIngested | None
    # replay id → its last logged score event (the whole event: rederive reads its judge calls)
    scored: dict[str, ReplayScored] = field(default_factory=dict)
    # replay id → its last failure, for replays with no score
    failed: dict[str, FailedReplay] = field(default_factory=dict)

    @property
    def outcomes(self) -> int:
        return len(self.scored) + len(self.failed)

    @property
    def complete(self) -> bool:
        """Request and ingest logged and every ingested replay has an outcome."""
        return self.request is not None and self.ingested is not None and self.outcomes >= self.ingested.total

    def methodology_versions(self, default: str) -> set[str]:
        """The versions the kept scores were judged under (``default`` for scores logged without one)."""
        return {s.methodology_version or default for s in self.scored.values()}


def run_inputs(events: Sequence[Envelope]) -> RunInputs:
    """Fold a run's events (in log order) into its certificate inputs; other topics are ignored."""
    request: RunRequested | None = None
    ingested: RunIngested | None = None
    scored: dict[str, ReplayScored] = {}
    failed: dict[str, FailedReplay] = {}
    for event in events:
        if event.topic == RunRequested.TOPIC and request is None:
            request = payload_as(event, RunRequested)
        elif event.topic == RunIngested.TOPIC and ingested is None:
            ingested = payload_as(event, RunIngested)
        elif event.topic == ReplayScored.TOPIC:
            s = payload_as(event, ReplayScored)
            scored[s.replay_id] = s
        elif event.topic == ReplayFailed.TOPIC:
            f = payload_as(event, ReplayFailed)
            failed[f.replay_id] = FailedReplay(
                replay_id=f.replay_id, ground_truth_id=f.ground_truth_id, stage=f.stage, reason=f.reason
            )
    for replay_id in scored:
        failed.pop(replay_id, None)  # a score wins over a failure recorded by an earlier attempt
    return RunInputs(request=request, ingested=ingested, scored=scored, failed=failed)
