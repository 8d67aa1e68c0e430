"""What the ingest and invoke handlers share: the ports they use (never a whole Services), settings, the
outbound HTTP client, the oracle process pool and a cache of run requests."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from cachetools import LRUCache

from echelon_platform.config import Settings
from echelon_platform.domain.events import RunRequested, Subjects, payload_as
from echelon_platform.errors import BusError
from echelon_platform.ports.bus import Publisher, StreamLookup
from echelon_platform.ports.log import LogReader
from echelon_platform.ports.run_secrets import SecretReader
from pipeline_workers.handlers.guards import PaidWorkGuard
from pipeline_workers.oracles.python import OracleProcessPool


@dataclass
class StageContext:
    log: LogReader  # the run's request
    guard: PaidWorkGuard  # no paid work twice, nor for a run that is over
    publisher: Publisher  # an event published before the handler returns (ingest's `run.ingesting`)
    stream: StreamLookup  # the run's request before the writer logged it
    secrets: SecretReader
    subjects: Subjects
    settings: Settings
    http: httpx.AsyncClient
    oracle_pool: OracleProcessPool | None = None  # warm processes for sync Python oracles
    _requests: LRUCache[str, RunRequested] = field(default_factory=lambda: LRUCache(1024))

    async def run_request(self, run_id: str) -> RunRequested:
        """The run's request event: from the log (valid events only), else the first valid one in the
        stream — never a malformed message someone published on the run's subject. Cached: a request
        never changes."""
        cached = self._requests.get(run_id)
        if cached is not None:
            return cached
        logged = await self.log.run_events(run_id, ["verify.run.requested"])
        envelope = logged[0] if logged else None
        if envelope is None:
            envelope = await self.stream.first_valid_on_subject(self.subjects.subject("verify.run.requested", run_id))
        if envelope is None:
            raise BusError(f"request event of run {run_id} not found in the log or the stream")
        request = payload_as(envelope, RunRequested)
        self._requests[run_id] = request
        return request
