"""What handlers share: the bus, secrets, settings, and a cache of run requests read from the stream."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import httpx

from echelon_platform.config import Settings
from echelon_platform.errors import BusError
from echelon_platform.events import RunRequested, payload_as
from echelon_platform.services import Services


@dataclass
class StageContext:
    services: Services
    settings: Settings
    http: httpx.AsyncClient
    _requests: OrderedDict[str, RunRequested] = field(default_factory=OrderedDict)

    async def run_request(self, run_id: str) -> RunRequested:
        """The run's request event, straight from the stream (stages never read domain state)."""
        cached = self._requests.get(run_id)
        if cached is not None:
            self._requests.move_to_end(run_id)
            return cached
        subject = self.services.subjects.subject("verify.run.requested", run_id)
        envelope = await self.services.bus.last_on_subject(subject)
        if envelope is None:
            raise BusError(f"request event of run {run_id} not found in the stream")
        request = payload_as(envelope, RunRequested)
        self._requests[run_id] = request
        if len(self._requests) > 1024:
            self._requests.popitem(last=False)
        return request
