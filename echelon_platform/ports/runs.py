"""The run read model, as stages and the watchdog read it: implemented by `adapters.readmodel_store.ReadModels`
(Redis) and `adapters.memory.MemoryRunStates`."""

from __future__ import annotations

from typing import Protocol

from echelon_platform.domain.projections import RunState


class RunStates(Protocol):
    async def get_run(self, run_id: str) -> RunState | None:
        """The run as last projected (it may lag the log), or None when not projected."""
        ...
