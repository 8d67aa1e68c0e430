"""How a replay stage (invoke, score) gives up on one replay: `verify.replay.failed`, the run goes on."""

from __future__ import annotations

from collections.abc import Sequence

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Payload, ReplayFailed, ReplayInvoked, ReplayRequested, make_event

REASON_CHARS = 2000  # a reason is for people; an oracle's or judge's long error text is cut here


def replay_failed(stage: str, envelope: Envelope, payload: ReplayRequested | ReplayInvoked, reason: str) -> Envelope:
    failed = ReplayFailed(
        run_id=payload.run_id,
        replay_id=payload.replay_id,
        ground_truth_id=payload.record.id,
        stage=stage,
        reason=reason[:REASON_CHARS],
    )
    return make_event(failed, causation_id=envelope.event_id)


class GivesUpOnTheReplay:
    """The `give_up` of a stage whose input is one replay: after the last attempt, that replay failed."""

    stage: str

    def give_up(self, envelope: Envelope, payload: Payload, reason: str) -> Sequence[Envelope]:
        assert isinstance(payload, ReplayRequested | ReplayInvoked)
        return [replay_failed(self.stage, envelope, payload, reason)]
