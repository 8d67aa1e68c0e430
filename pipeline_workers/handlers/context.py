"""What handlers share: services, settings, the oracle process pool, a cache of run requests from the stream."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from cachetools import LRUCache

from echelon_platform.adapters.adaptive_limit import LimiterRegistry
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
    oracle_limits: LimiterRegistry | None = None  # adaptive concurrency per HTTP oracle endpoint
    _requests: LRUCache[str, RunRequested] = field(default_factory=lambda: LRUCache(1024))

    async def run_request(self, run_id: str) -> RunRequested:
        """The run's request event: from the log (valid events only), else the first valid one in the
        stream — never a malformed message someone published on the run's subject. Cached: a request
        never changes."""
        cached = self._requests.get(run_id)
        if cached is not None:
            return cached
        logged = await self.services.store.run_events(run_id, ["verify.run.requested"])
        envelope = logged[0] if logged else None
        if envelope is None:
            subject = self.services.subjects.subject("verify.run.requested", run_id)
            envelope = await self.services.bus.first_valid_on_subject(subject)
        if envelope is None:
            raise BusError(f"request event of run {run_id} not found in the log or the stream")
        request = payload_as(envelope, RunRequested)
        self._requests[run_id] = request
        return request
