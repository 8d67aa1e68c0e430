"""What handlers share: services, settings, the oracle process pool, a cache of run requests from the stream."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from cachetools import LRUCache

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import RunRequested, payload_as
from echelon_platform.errors import BusError
from pipeline_workers.oracles.python import OracleProcessPool


@dataclass
class StageContext:
    services: Services
    settings: Settings
    http: httpx.AsyncClient
    oracle_pool: OracleProcessPool | None = None  # warm processes for sync Python oracles
    _requests: LRUCache[str, RunRequested] = field(default_factory=lambda: LRUCache(1024))

    async def run_request(self, run_id: str) -> RunRequested:
        """The run's request event, straight from the stream (cached: a request never changes)."""
        cached = self._requests.get(run_id)
        if cached is not None:
            return cached
        subject = self.services.subjects.subject("verify.run.requested", run_id)
        envelope = await self.services.bus.last_on_subject(subject)
        if envelope is None:
            raise BusError(f"request event of run {run_id} not found in the stream")
        request = payload_as(envelope, RunRequested)
        self._requests[run_id] = request
        return request
