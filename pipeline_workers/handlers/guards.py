"""Checks a stage makes before paid work (oracle, judge): is the run over, is the outcome already stored?

Both are reads, never writes: the Redis read model (it may lag; then we only do a little extra work) and
the Postgres log (the coordinator's; a stored dedup key means the outcome was already recorded).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from echelon_platform.adapters.services import Services

log = structlog.get_logger(__name__)


async def run_is_over(services: Services, run_id: str) -> bool:
    state = await services.read_models.get_run(run_id)
    return state is not None and state.status.terminal


async def skip_reason(services: Services, run_id: str, dedup_keys: Sequence[str]) -> str | None:
    """Why this work need not be done again, or None when it must be done."""
    if await run_is_over(services, run_id):
        return "run already ended"
    stored = await services.store.has_dedup_keys(dedup_keys)
    if stored:
        return f"already in the log: {', '.join(sorted(stored))}"
    return None


def log_skip(stage: str, run_id: str, reason: str) -> None:
    log.info("stage.skip", stage=stage, run_id=run_id, reason=reason)
