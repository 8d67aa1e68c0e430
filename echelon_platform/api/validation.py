"""Request-time checks that need more than a schema: repo URL, oracle target, scoring weights."""

from __future__ import annotations

from echelon_platform.api.schemas import RunCreate
from echelon_platform.config import Settings
from pipeline_workers.certify import validate_weights
from pipeline_workers.ingest.base import validate_repo_url
from pipeline_workers.oracles.http import check_url_allowed
from pipeline_workers.oracles.python import check_callable_allowed


async def validate_run_request(body: RunCreate, settings: Settings) -> dict[str, float]:
    """Raise RequestRejected (→ 422) with an actionable message; returns the normalised weights."""
    validate_repo_url(body.repo_url)
    if body.oracle_type == "python":
        check_callable_allowed(f"{body.oracle_module}:{body.oracle_callable}", settings.oracle_allowlist)
    else:
        await check_url_allowed(str(body.oracle_url), settings.allow_private_oracles)
    return validate_weights(body.weights)
