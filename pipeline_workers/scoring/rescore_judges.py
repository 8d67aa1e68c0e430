"""Which judge scores a replay: the stage's own, or the methodology and judge a rescore run asked for.

Scorers for other (methodology, judge) pairs are built on first use from the stage's settings and kept for
the process's life (a handful at most: each pair is a released methodology and a configured judge kind).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from echelon_platform.adapters.adaptive_limit import LimiterRegistry
from echelon_platform.config import Settings
from echelon_platform.domain.events import RescoreSpec, RunRequested
from pipeline_workers.scoring.base import Scorer
from pipeline_workers.scoring.judge_choice import scorer_for


class ScorerChoice:
    def __init__(
        self,
        default: Scorer,
        settings: Settings | None = None,
        *,
        run_request: Callable[[str], Awaitable[RunRequested]] | None = None,
        limits: LimiterRegistry | None = None,
    ) -> None:
        self.default = default
        self.settings = settings
        self.run_request = run_request
        self.limits = limits
        self._built: dict[tuple[str, str | None], Scorer] = {}
        self._resources = AsyncExitStack()

    async def for_run(self, run_id: str) -> Scorer:
        """The scorer for one run's replays (its request says whether it is a rescore, and of what)."""
        if self.run_request is None:
            return self.default
        return await self.for_rescore((await self.run_request(run_id)).rescore)

    async def for_rescore(self, spec: RescoreSpec | None) -> Scorer:
        """The default scorer, unless a rescore names another methodology or judge. ConfigError when the
        methodology is not released with this stage or the judge is unknown or not configured."""
        if spec is None or self.settings is None:
            return self.default
        if spec.methodology_version == self.settings.methodology_version and spec.judge is None:
            return self.default
        key = (spec.methodology_version, spec.judge)
        built = self._built.get(key)
        if built is None:
            chosen = self.settings.model_copy(
                update={
                    "methodology_version": spec.methodology_version,
                    "judges": [spec.judge] if spec.judge is not None else self.settings.judges,
                }
            )
            built = await self._resources.enter_async_context(scorer_for(chosen, self.limits))
            self._built[key] = built
        return built

    async def aclose(self) -> None:
        await self._resources.aclose()
