"""Builds every stage worker and the watchdog from Services (each handed only the ports it uses); runs them
until stopped (or idle)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import httpx

from echelon_platform.adapters.adaptive_limit import LimiterRegistry
from echelon_platform.adapters.judge_ledger_store import PgJudgeLedger
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import load_keyring, publish_keys
from echelon_platform.config import Settings
from echelon_platform.domain.stages import STAGE_NAMES
from pipeline_workers.handlers.certify import CertifyHandler
from pipeline_workers.handlers.context import StageContext
from pipeline_workers.handlers.guards import PaidWorkGuard
from pipeline_workers.handlers.ingest import IngestHandler
from pipeline_workers.handlers.invoke import InvokeHandler
from pipeline_workers.handlers.score import ScoreHandler
from pipeline_workers.methodology_registration import register_if_missing
from pipeline_workers.oracles.python import OracleProcessPool
from pipeline_workers.scoring.base import Scorer
from pipeline_workers.scoring.judge_choice import scorer_for
from pipeline_workers.scoring.rescore_judges import ScorerChoice
from pipeline_workers.stage import Handler, StageStats, StageWorker
from pipeline_workers.watchdog import WRITER_BEHIND_S, Watchdog

STAGES = STAGE_NAMES  # the stage table (echelon_platform/domain/stages.py), in pipeline order
# Warm child processes kept for sync Python oracles between calls (one runs per call in flight).
MAX_IDLE_ORACLE_PROCESSES = 16
WARM_ORACLE_PROCESSES = 2


def outbound_client() -> httpx.AsyncClient:
    """The stages' HTTP client (oracles, GitHub). `trust_env=False`: no proxy from HTTP(S)_PROXY/ALL_PROXY,
    no ~/.netrc credentials, no SSL_CERT_FILE — an oracle call goes to the address the SSRF guard checked,
    and what a stage reaches does not depend on the environment it was started in. GitHub calls share it:
    point ECHELON_GITHUB_API_URL at a reachable endpoint instead of relying on a proxy."""
    return httpx.AsyncClient(timeout=httpx.Timeout(30.0), follow_redirects=False, trust_env=False)


def stage_context(
    services: Services,
    settings: Settings,
    http: httpx.AsyncClient,
    *,
    oracle_pool: OracleProcessPool | None = None,
    oracle_limits: LimiterRegistry | None = None,
) -> StageContext:
    """The ports the ingest and invoke handlers use, taken from the process's connections."""
    return StageContext(
        log=services.store,
        guard=PaidWorkGuard(services.store),
        publisher=services.bus,
        stream=services.bus,
        secrets=services.secrets,
        subjects=services.subjects,
        settings=settings,
        http=http,
        oracle_pool=oracle_pool,
        judge_ledger=PgJudgeLedger(services.store),
        oracle_limits=oracle_limits,
    )


def watchdog_for(
    services: Services,
    *,
    timeout_s: float,
    interval_s: float,
    writer_behind_s: float = WRITER_BEHIND_S,
    kind: type[Watchdog] = Watchdog,
) -> Watchdog:
    """The watchdog on the process's connections: it queries the log, reads run states (to say where a run
    stopped), watches the writers' backlogs and publishes its decisions. (`kind`: a variant, for tests.)"""
    settings = services.settings
    return kind(
        log_queries=services.store,
        runs=services.read_models,
        publisher=services.bus,
        backlog=services.bus,
        subjects=services.subjects,
        writer_durables=[settings.writer_durable(k) for k in settings.partitioning.indices],
        timeout_s=timeout_s,
        interval_s=interval_s,
        writer_behind_s=writer_behind_s,
    )


class Pipeline:
    """The four stages (optionally a subset) plus the watchdog, sharing one HTTP client."""

    def __init__(
        self,
        services: Services,
        settings: Settings,
        *,
        stages: tuple[str, ...] = STAGES,
        scorer: Scorer | None = None,
    ) -> None:
        self.services = services
        self.settings = settings
        self.stages = stages
        self._scorer = scorer
        self._resources = AsyncExitStack()
        self.workers: list[StageWorker] = []
        self.watchdog = watchdog_for(
            services, timeout_s=settings.run_timeout_s, interval_s=settings.watchdog_interval_s
        )

    async def __aenter__(self) -> Self:
        http = await self._resources.enter_async_context(outbound_client())
        scorer = self._scorer
        judge_limits = self._limits(self.settings.judge_concurrency, self.settings.judge_initial_concurrency)
        if scorer is None:
            scorer = await self._resources.enter_async_context(scorer_for(self.settings, judge_limits))
        pool = await self._resources.enter_async_context(
            OracleProcessPool(
                max_idle=min(self.settings.stage_concurrency, MAX_IDLE_ORACLE_PROCESSES),
                max_processes=self.settings.oracle_processes,
                # Started with the worker, so the first replays do not wait for a Python start-up.
                warm=WARM_ORACLE_PROCESSES if "invoke" in self.stages else 0,
            )
        )
        ctx = stage_context(
            self.services,
            self.settings,
            http,
            oracle_pool=pool,
            oracle_limits=self._limits(self.settings.oracle_concurrency, self.settings.oracle_initial_concurrency),
        )

        async def owner(run_id: str) -> str:
            return (await ctx.run_request(run_id)).user_id

        # A rescore run may name another methodology or judge: built on first use, closed with the pipeline.
        choice = ScorerChoice(scorer, self.settings, run_request=ctx.run_request, limits=judge_limits)
        self._resources.push_async_callback(choice.aclose)
        handlers: dict[str, Handler] = {
            "ingest": IngestHandler(ctx),
            "invoke": InvokeHandler(ctx, scorer),
            "score": ScoreHandler(ctx, scorer, self.services.metrics, choice=choice),
        }
        if "certify" in self.stages:  # only the certify stage holds (or generates) the private key
            keyring = load_keyring(self.settings)
            await publish_keys(self.services.store, keyring)
            await register_if_missing(self.services.store, self.services.bus, self.settings.methodology_version)
            handlers["certify"] = CertifyHandler(
                self.services.store,
                keyring,
                methodology_version=self.settings.methodology_version,
                judge_mixing=self.settings.judge_mixing,
            )
        self.workers = [
            StageWorker(
                handlers[name],
                bus=self.services.bus,
                metrics=self.services.metrics,
                durable_prefix=self.settings.consumer_prefix,
                concurrency=self.settings.stage_concurrency,
                per_run=self.settings.stage_per_run_concurrency,
                per_user=self.settings.stage_per_user_concurrency,
                owner=owner,
                ack_wait_s=self.settings.ack_wait_s,
                max_deliver=self.settings.max_deliver,
                fetch_timeout_s=self.settings.fetch_timeout_s,
            )
            for name in self.stages
        ]
        return self

    def _limits(self, cap: int, initial: int | None) -> LimiterRegistry:
        """Adaptive limits shared through Redis by every process calling the same endpoint."""
        return self.services.limiters(cap, initial)

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        await self._resources.aclose()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.watchdog.stop()

    async def run(self, *, watchdog: bool = True) -> None:
        tasks: list[Coroutine[Any, Any, object]] = [w.run() for w in self.workers]
        if watchdog:
            tasks.append(self.watchdog.run())
        await asyncio.gather(*tasks)

    async def run_until_idle(self) -> dict[str, StageStats]:
        """Each stage drains what is waiting for it (tests and scripts)."""
        results = await asyncio.gather(*(w.run(until_idle=True) for w in self.workers))
        return {w.handler.stage: r for w, r in zip(self.workers, results, strict=True)}
