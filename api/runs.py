"""Verification run routes: submit (publish `verify.run.requested`), read one, list. Runs are private."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import datetime
from typing import Annotated, Literal

import orjson
import structlog
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from ulid import ULID

from api import responses as r
from api.auth import Principal
from api.deps import OptionsDep, ServicesDep, SettingsDep, UserDep
from api.limits import IdempotencyRecord, IdempotencyStore, RateLimiter
from api.schemas import RunCreate, RunCreated, RunList, RunView
from api.validation import validate_run_request
from echelon_platform.adapters.readmodel_store import RunReader
from echelon_platform.adapters.secret_store import RunSecrets
from echelon_platform.adapters.services import Services
from echelon_platform.domain.envelope import utcnow
from echelon_platform.domain.events import OracleSpec, RunRequested, make_event
from echelon_platform.domain.projections import RunState, Status, apply, public_view
from echelon_platform.errors import NotFound, RequestRejected

StatusName = Literal["PENDING", "INGESTING", "INVOKING", "SCORING", "CERTIFYING", "COMPLETED", "FAILED"]
MAX_OFFSET = 1_000_000
# How long a request that lost the Idempotency-Key race waits for the winner to publish.
IDEMPOTENT_WAIT_S = 6.0

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/api/v1/verification", tags=["runs"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Any unique printable-ASCII string (e.g. a UUID): retrying with the same key returns the "
        "run the first request started (200) instead of starting another. Kept for 24 h.",
    ),
]


def fingerprint(body: RunCreate) -> str:
    """What makes two requests 'the same'; secret values are left out (only header names count)."""
    data = body.model_dump(mode="json", exclude={"github_token", "oracle_headers"})
    data["oracle_header_names"] = sorted(body.oracle_headers or {})
    data["has_github_token"] = body.github_token is not None
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def _replayed(
    store: IdempotencyStore, user: Principal, key: str, record: IdempotencyRecord, fp: str, services: Services
) -> RunCreated:
    """The answer to a repeated Idempotency-Key: the first request's run, once that request has published."""
    if record.fingerprint != fp:
        raise RequestRejected(
            "this Idempotency-Key was already used for a different request; use a new key for a new run"
        )
    deadline = time.monotonic() + IDEMPOTENT_WAIT_S
    current: IdempotencyRecord | None = record
    while current is not None and not current.done and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # the first request is publishing (a few ms)
        current = await store.get(user.user_id, key)
    if current is None or not current.done or current.run_id != record.run_id:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "the first request with this Idempotency-Key has not finished (or failed): retry it",
        )
    state = await services.read_models.get_run(record.run_id)
    current_status = state.status.name if state is not None and state.visible else Status.PENDING.name
    return RunCreated(run_id=record.run_id, status=current_status, created_at=record.created_at)


@router.post(
    "/runs",
    status_code=status.HTTP_201_CREATED,
    response_model=RunCreated,
    responses=r.merge(
        {200: {"model": RunCreated, "description": "The run an earlier request with this Idempotency-Key started"}},
        r.PROTECTED,
        r.MALFORMED_BODY,
        r.CONFLICT,
        r.RATE_LIMITED,
    ),
)
async def create_run(
    body: RunCreate,
    user: UserDep,
    services: ServicesDep,
    settings: SettingsDep,
    options: OptionsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> RunCreated:
    """Start a verification run. A 201 means the request event is stored in JetStream.

    With an `Idempotency-Key`, a retry returns the same run with 200 (also while two requests race)."""
    redis = services.read_models.redis
    store = IdempotencyStore(redis, settings.redis_prefix, ttl_s=options.idempotency_ttl_s)
    fp = fingerprint(body)
    if idempotency_key is not None:
        existing = await store.get(user.user_id, idempotency_key)
        if existing is not None:
            response.status_code = status.HTTP_200_OK
            return await _replayed(store, user, idempotency_key, existing, fp, services)
    weights = await validate_run_request(body, settings)
    run_id = str(ULID())
    created_at = utcnow()
    claim = IdempotencyRecord(run_id=run_id, created_at=created_at, fingerprint=fp, done=False)
    if idempotency_key is not None:
        for _ in range(3):
            if await store.claim(user.user_id, idempotency_key, claim):
                break
            existing = await store.get(user.user_id, idempotency_key)  # lost the race: answer with the winner's run
            if existing is not None:
                response.status_code = status.HTTP_200_OK
                return await _replayed(store, user, idempotency_key, existing, fp, services)
            # The winner failed and released the key in between: claim again.
        else:
            raise HTTPException(status.HTTP_409_CONFLICT, "this Idempotency-Key is contended; retry the request")
    try:
        limiter = RateLimiter(redis, settings.redis_prefix, limit=options.runs_per_minute, window_s=60)
        await limiter.hit("runs", user.user_id)
        await _publish_request(body, user, services, run_id, created_at, weights)
    except BaseException:
        if idempotency_key is not None:
            await store.release(user.user_id, idempotency_key, run_id)
        raise
    if idempotency_key is not None:
        await store.complete(user.user_id, idempotency_key, claim)
    return RunCreated(run_id=run_id, status=Status.PENDING.name, created_at=created_at)


async def _publish_request(
    body: RunCreate, user: Principal, services: Services, run_id: str, created_at: datetime, weights: dict[str, float]
) -> None:
    secrets = RunSecrets(github_token=body.github_token, oracle_headers=body.oracle_headers or {})
    secret_ref = None
    if not secrets.is_empty():
        secret_ref = run_id
        await services.secrets.put(secret_ref, secrets)
    payload = RunRequested(
        run_id=run_id,
        user_id=user.user_id,
        construct_id=body.construct_id,
        repo_url=body.repo_url,
        oracle=OracleSpec(
            type=body.oracle_type,
            url=body.oracle_url,
            module=body.oracle_module,
            callable=body.oracle_callable,
            timeout_s=body.oracle_timeout_s,
            header_names=sorted(body.oracle_headers or {}),
        ),
        limit=body.limit,
        min_replays=body.min_replays,
        weights=weights,
        since=body.since,
        labels=body.labels,
        include_unmerged=body.include_unmerged,
        secret_ref=secret_ref,
        created_at=created_at,
    )
    event = make_event(payload)
    seq = await services.bus.publish(event)
    services.metrics.events_published.labels(event.topic).inc()
    log.info("api.published", topic=event.topic, correlationId=event.correlation_id, eventId=event.event_id, seq=seq)


async def load_run(services: Services, run_id: str, reader: RunReader | None = None) -> RunState | None:
    """The projected run, or — right after a 201, before the coordinator caught up — the request event itself,
    read straight from the stream, so a GET after a POST never 404s."""
    state = await (reader.get(run_id) if reader is not None else services.read_models.get_run(run_id))
    if state is not None and state.visible:
        return state
    if not run_id.isascii() or not run_id.isalnum() or len(run_id) > 64:
        return None
    requested = await services.bus.last_on_subject(services.subjects.subject("verify.run.requested", run_id))
    if requested is None:
        return None
    return apply(state or RunState(run_id=run_id), requested, 0)  # not logged yet: no position


@router.get(
    "/runs/{run_id}",
    response_model=RunView,
    responses=r.merge(r.PROTECTED, r.NOT_FOUND),
)
async def get_run(run_id: str, user: UserDep, services: ServicesDep, request: Request) -> RunView:
    """One run: yours, or anyone's for an admin. Another user's run is a 404, as if it did not exist."""
    state = await load_run(services, run_id, request.app.state.run_reader)
    if state is None or not user.can_see(state.user_id):
        raise NotFound(f"run {run_id} not found")
    return RunView.model_validate(public_view(state))


@router.get("/runs", response_model=RunList, responses=r.PROTECTED)
async def list_runs(
    user: UserDep,
    services: ServicesDep,
    status_filter: Annotated[StatusName | None, Query(alias="status")] = None,
    construct_id: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> RunList:
    """The caller's runs (an admin's: everyone's), newest first; `total` counts the filtered set."""
    states, total = await services.read_models.list_runs(
        user_id=None if user.is_admin else user.user_id,
        status=Status[status_filter] if status_filter else None,
        construct_id=construct_id,
        limit=limit,
        offset=offset,
    )
    return RunList(
        runs=[RunView.model_validate(public_view(s)) for s in states], total=total, limit=limit, offset=offset
    )
