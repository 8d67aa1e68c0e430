"""Read models kept level with the log: project a batch, and when they are lost or behind, rebuild them or
catch them up from the log (at start-up, when idle, and whenever a projection finds them stale). Nothing an
operator has to do."""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog

from coordinator.admission import TrustedKeys
from coordinator.certify_trigger import CertifyTrigger
from coordinator.rebuild import Rebuilder
from coordinator.retrying import Retrying
from echelon_platform.adapters.readmodel_writer import Projected, Projector, RunEvent
from echelon_platform.errors import ReadModelsStale
from echelon_platform.metrics import Metrics
from echelon_platform.ports.log import LogReader

log = structlog.get_logger(__name__)

CATCH_UP_CHUNK = 1000


class Healing:
    """`own_partition`: the partition whose events a catch-up reads (None: the whole log, unpartitioned)."""

    def __init__(
        self,
        *,
        store: LogReader,
        projector: Projector,
        keys: TrustedKeys,
        metrics: Metrics,
        retrying: Retrying,
        trigger: CertifyTrigger,
        own_partition: int | None,
    ) -> None:
        self.store = store
        self.projector = projector
        self.keys = keys
        self.metrics = metrics
        self.retrying = retrying
        self.trigger = trigger
        self.own_partition = own_partition

    async def project(self, events: Sequence[tuple[RunEvent, int]]) -> Projected:
        """Project; when the read models are lost or outdated, rebuild them from the log first."""
        while True:
            try:
                return await self.retrying("project", lambda: self.projector.project(events))
            except ReadModelsStale as exc:
                log.warning("coordinator.read_models_stale", reason=str(exc))
                await self.heal(force_rebuild=True)

    async def heal(self, *, force_rebuild: bool = False) -> None:
        """Bring the read models level with the log: rebuild them when their checkpoint is missing or of
        another generation, else apply what the log holds beyond the checkpoint. The certify trigger is
        announced again for every run touched, since announcements may have been lost with the models."""
        checkpoint = await self.retrying("checkpoint", self.projector.checkpoint)
        if force_rebuild or checkpoint is None or not checkpoint.current:
            await self._rebuild()
            return
        after = checkpoint.seq

        # Only this partition's events: positions are in commit order per partition, not across them.
        async def read_behind() -> list[tuple[RunEvent, int]]:
            return [
                (event, seq) async for seq, event in self.store.stream(after_seq=after, partition=self.own_partition)
            ]

        behind = await self.retrying("catch_up", read_behind)
        for i in range(0, len(behind), CATCH_UP_CHUNK):
            projected = await self.project(behind[i : i + CATCH_UP_CHUNK])
            await self.trigger.announce(projected.runs, {})
        if behind:
            log.info("coordinator.caught_up", events=len(behind), from_seq=after)

    async def _rebuild(self) -> None:
        started = time.perf_counter()
        while True:
            rebuilder = Rebuilder(self.store, self.projector, self.keys)
            rebuilder.progress_total = await self.retrying("count", self.store.max_seq)
            try:
                report = await self.retrying("rebuild", rebuilder.rebuild)
                break
            except ReadModelsStale as exc:  # Redis lost the rebuild's work before its switch: start over
                log.warning("coordinator.rebuild_lost", reason=str(exc))
        log.info(
            "coordinator.rebuilt",
            events=report.events,
            runs=report.runs,
            seconds=round(time.perf_counter() - started, 3),
        )
        self.metrics.read_model_rebuilds.inc()
        await self.trigger.announce(rebuilder.states, {})
