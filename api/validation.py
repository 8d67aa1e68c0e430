"""Request-time checks that need more than a schema: repo URL, oracle target, scoring weights."""

from __future__ import annotations

import asyncio

from api.schemas import RunCreate
from echelon_platform.adapters.url_guard import check_url_allowed
from echelon_platform.config import Settings
from echelon_platform.domain.certificate import validate_weights
from echelon_platform.domain.oracle_targets import check_callable_allowed
from echelon_platform.domain.repo_refs import SAMPLE_REPO, check_local_repo_allowed, validate_repo_url
from echelon_platform.errors import OracleError, RequestRejected

# A request must not hang on a slow resolver: an oracle host that does not resolve quickly is refused.
DNS_TIMEOUT_S = 5.0


def check_run_request(body: RunCreate, settings: Settings) -> dict[str, float]:
    """The checks that ask nobody (RequestRejected → 422); returns the normalised weights. The oracle host's
    DNS lookup is `check_oracle_host`, made only once the caller is admitted."""
    if body.repo_url != SAMPLE_REPO:  # the bundled sample is resolved by the ingest worker
        validate_repo_url(body.repo_url)
        # stat() of a path: cheap enough to do inline, and it must run before anything is published.
        check_local_repo_allowed(body.repo_url, settings.allowed_repo_roots())
    if body.oracle_type == "python":
        check_callable_allowed(f"{body.oracle_module}:{body.oracle_callable}", settings.oracle_allowlist)
    return validate_weights(body.weights)


async def check_oracle_host(body: RunCreate, settings: Settings) -> None:
    """An HTTP oracle's host resolves, in time, to an address it may have (RequestRejected → 422)."""
    if body.oracle_type == "python":
        return
    try:
        async with asyncio.timeout(DNS_TIMEOUT_S):
            await check_url_allowed(str(body.oracle_url), settings.allow_private_oracles)
    except TimeoutError as exc:
        raise RequestRejected(f"oracle host did not resolve within {DNS_TIMEOUT_S:g} s") from exc
    except OracleError as exc:  # a stage error at run time, but the caller's to fix at request time
        raise RequestRejected(str(exc)) from exc
    except ValueError as exc:  # urlsplit refuses e.g. an unclosed IPv6 bracket
        raise RequestRejected(f"oracle_url is not a valid URL: {exc}") from exc
