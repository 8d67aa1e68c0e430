"""The certify trigger: the writer tells the certifier about runs whose replays are all in (`run.certifying`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from coordinator.retrying import Retrying
from echelon_platform.adapters.readmodel_writer import RunEvent
from echelon_platform.domain.events import RunCertifying, make_event
from echelon_platform.domain.lifecycle import CERTIFY_TRIGGERS
from echelon_platform.domain.projections import RunState
from echelon_platform.ports.bus import Publisher


def trigger_causes(events: Sequence[tuple[RunEvent, int]]) -> dict[str, str]:
    """Per run, the last event of this batch that may have left it awaiting its certificate."""
    return {e.run_id: e.event_id for e, _ in events if e.topic in CERTIFY_TRIGGERS}


class CertifyTrigger:
    def __init__(self, bus: Publisher, retrying: Retrying) -> None:
        self.bus = bus
        self.retrying = retrying

    async def announce(self, runs: Mapping[str, RunState], causes: Mapping[str, str]) -> None:
        """Tell the certifier about runs it has work for (deduplicated per run), pipelined: with `causes`,
        only the runs this batch's events touched; without, every run (after a rebuild or catch-up, when
        earlier announcements may be lost)."""
        candidates = runs.keys() & causes.keys() if causes else runs.keys()
        announcements = [
            make_event(RunCertifying(run_id=run_id, total=state.total), causation_id=causes.get(run_id))
            for run_id, state in ((r, runs[r]) for r in sorted(candidates))
            if state.awaiting_certificate and state.total is not None
        ]
        if announcements:
            bus = self.bus
            await self.retrying("publish", lambda: bus.publish_many(announcements))
