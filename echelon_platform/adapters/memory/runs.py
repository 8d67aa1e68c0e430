"""Run states in memory (`ports.runs.RunStates`): what a test says the read model holds."""

from __future__ import annotations

from echelon_platform.domain.projections import RunState


class MemoryRunStates:
    def __init__(self) -> None:
        self.runs: dict[str, RunState] = {}

    async def get_run(self, run_id: str) -> RunState | None:
        return self.runs.get(run_id)
