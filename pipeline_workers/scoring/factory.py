"""Choose the judge: Anthropic when a key is configured, else the offline deterministic scorer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anthropic

from echelon_platform.config import Settings
from pipeline_workers.scoring.anthropic_judge import AnthropicScorer
from pipeline_workers.scoring.base import Scorer
from pipeline_workers.scoring.offline import OfflineLexicalScorer


@asynccontextmanager
async def scorer_for(settings: Settings) -> AsyncIterator[Scorer]:
    """Yield the configured scorer; an Anthropic client is closed on exit."""
    if settings.anthropic_api_key is None:
        yield OfflineLexicalScorer()
        return
    client = anthropic.AsyncAnthropic(
        api_key=settings.anthropic_api_key.get_secret_value(), base_url=settings.anthropic_base_url
    )
    try:
        yield AnthropicScorer(client, model=settings.judge_model, max_concurrency=settings.judge_concurrency)
    finally:
        await client.close()
