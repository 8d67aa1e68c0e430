"""What the ingest and invoke handlers share: the ports they use (never a whole Services), settings, the
outbound HTTP client, the oracle process pool and a cache of run requests."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from cachetools import LRUCache

from echelon_platform.adapters.adaptive_limit import LimiterRegistry
from echelon_platform.adapters.run_requests import request_of
from echelon_platform.config import Settings
from echelon_platform.domain.events import JudgeTerms, ReplayInvoked, ReplayRequested, RunRequested, Subjects
from echelon_platform.errors import BusError
from echelon_platform.ports.bus import Publisher, StreamLookup
from echelon_platform.ports.judge_ledger import JudgeLedgerReads
from echelon_platform.ports.log import LogReader
from echelon_platform.ports.run_secrets import SecretReader
from pipeline_workers.handlers.guards import PaidWorkGuard
from pipeline_workers.handlers.judge_ledger import JudgeLedger
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
    judge_ledger: JudgeLedgerReads | None = None  # the run's judge spending, logged answers (None: no reuse)
    oracle_limits: LimiterRegistry | None = None  # adaptive concurrency per HTTP oracle endpoint
    _requests: LRUCache[str, RunRequested] = field(default_factory=lambda: LRUCache(1024))

    def judge_ledger_for(
        self, replay: ReplayRequested | ReplayInvoked, *, causation_id: str, defer_outcomes: bool = False
    ) -> JudgeLedger:
        """Where this replay's judge calls go: logged before and after each request, under the run's budget,
        reusing logged answers unless the run opted out (its terms travel with the replay)."""
        terms = replay.judge_terms or JudgeTerms()
        return JudgeLedger(
            self.publisher,
            self.log,
            self.judge_ledger,
            replay.run_id,
            replay.replay_id,
            causation_id=causation_id,
            max_cost_usd=terms.max_cost_usd,
            reuse=terms.cache,
            defer_outcomes=defer_outcomes,
        )

    async def run_request(self, run_id: str) -> RunRequested:
        """The run's request (`request_of`), cached: a request never changes. Only for events that do not
        carry what they need of it (logged before they did)."""
        cached = self._requests.get(run_id)
        if cached is not None:
            return cached
        request = await request_of(self.stream, self.log, self.subjects, run_id)
        if request is None:
            raise BusError(f"request event of run {run_id} not found in the stream or the log")
        self._requests[run_id] = request
        return request
