"""Choose the judges: `ECHELON_JUDGES` (an ordered list, each behind a circuit breaker), else Anthropic
when a key is configured, else the offline deterministic scorer."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from echelon_platform.adapters.adaptive_limit import LimiterRegistry
from echelon_platform.config import JudgeEndpoint, Settings, judge_name
from echelon_platform.errors import ConfigError
from pipeline_workers.scoring.anthropic_judge import AnthropicScorer
from pipeline_workers.scoring.base import Scorer
from pipeline_workers.scoring.breaker import CircuitBreaker
from pipeline_workers.scoring.chain import JudgeChain
from pipeline_workers.scoring.judge_limit import classify_judge_failure
from pipeline_workers.scoring.messages_api import MessagesClient
from pipeline_workers.scoring.offline import OfflineLexicalScorer
from pipeline_workers.scoring.prompts import load_prompts


@asynccontextmanager
async def scorer_for(settings: Settings, limits: LimiterRegistry | None = None) -> AsyncIterator[Scorer]:
    """Yield the configured scorer; its HTTP clients are closed on exit. With `limits` (Redis-backed), every
    process on one endpoint and key shares one adaptive limit."""
    specs = settings.judges or (
        [f"anthropic:{settings.judge_model}"] if settings.anthropic_api_key is not None else ["offline"]
    )
    async with AsyncExitStack() as stack:
        judges = [await _judge(spec, settings, stack, limits) for spec in specs]
        if settings.judges is None:  # the single configured judge, as before: no breaker in the way
            yield judges[0]
            return
        yield JudgeChain(
            [
                (
                    judge,
                    CircuitBreaker(
                        failure_threshold=settings.judge_breaker_failures, cooldown_s=settings.judge_breaker_cooldown_s
                    ),
                )
                for judge in judges
            ]
        )


async def _judge(
    entry: str | JudgeEndpoint, settings: Settings, stack: AsyncExitStack, limits: LimiterRegistry | None
) -> Scorer:
    prompts = load_prompts(settings.methodology_version)
    spec = judge_name(entry)
    if spec == "offline":
        return OfflineLexicalScorer(methodology_version=prompts.version)
    kind, _, model = spec.partition(":")
    if kind != "anthropic" or not model:
        raise ConfigError(f"unknown judge {spec!r}: use 'anthropic:<model>' or 'offline'")
    key, base_url = _endpoint(entry, settings)
    client = MessagesClient(key, base_url)
    stack.push_async_callback(client.close)
    limiter = None
    if limits is not None:
        limiter = limits.for_endpoint(client.endpoint, classify=classify_judge_failure)
    return AnthropicScorer(
        client, model=model, max_concurrency=settings.judge_concurrency, prompts=prompts, limiter=limiter
    )


def _endpoint(entry: str | JudgeEndpoint, settings: Settings) -> tuple[str, str | None]:
    """The key and base URL of one Anthropic judge: its own when its entry names them, else the shared ones."""
    spec = judge_name(entry)
    base_url = settings.anthropic_base_url
    if isinstance(entry, JudgeEndpoint):
        base_url = entry.base_url or base_url
        if entry.api_key_env is not None:
            key = os.environ.get(entry.api_key_env)
            if not key:
                raise ConfigError(f"judge {spec!r} takes its key from {entry.api_key_env}, which is not set")
            return key, base_url
    if settings.anthropic_api_key is None:
        raise ConfigError(f"judge {spec!r} needs ECHELON_ANTHROPIC_API_KEY")
    return settings.anthropic_api_key.get_secret_value(), base_url
