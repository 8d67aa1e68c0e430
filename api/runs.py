"""Verification run routes: submit (publish `verify.run.requested`), read one, list. Runs are private.

`Idempotency-Key` needs no state of its own: the run id is derived from (user, key), so every retry
publishes the same dedup key (`verify.run.requested:<run_id>`) and JetStream's duplicate window plus the
log's unique dedup key store one run whatever failed in between (a 503, a Redis flush, a lost ack).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
import structlog
from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from api import responses as r
from api.auth import Principal
from api.certificates import check_construct_owner
from api.deps import (
    SECURITY_REQUIREMENT,
    ApiKeysDep,
    ReadModelsDep,
    RunSourceDep,
    UserDep,
    get_user_or_wallet,
)
from api.edge import PARSED_JSON
from api.log_reads import NOT_LEVEL, not_level
from api.publishing import publish_event
from api.schemas import ErrorBody, RunCreate, RunCreated, RunList, RunView
from api.sources import RunSource
from api.validation import check_oracle_host, check_run_request
from echelon_platform.adapters.rate_limits import RecentRuns
from echelon_platform.adapters.readmodel_store import Freshness, ReadModels, RunReader
from echelon_platform.adapters.run_admission import RunAdmission
from echelon_platform.adapters.run_requests import request_of
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope, utcnow
from echelon_platform.domain.events import OracleSpec, RunRequested, make_event
from echelon_platform.domain.ids import new_ulid
from echelon_platform.domain.projections import RunState, Status, public_view
from echelon_platform.domain.values import matches_construct
from echelon_platform.errors import BusError, NotFound, ReadModelError, RequestRejected, StoreError
from echelon_platform.ports.run_secrets import RunSecrets

StatusName = Literal["PENDING", "INGESTING", "INVOKING", "SCORING", "CERTIFYING", "COMPLETED", "FAILED"]
MAX_OFFSET = 1_000_000

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
        "run the first request started (200) instead of starting another, for as long as the run exists. "
        "Retry with the same key after a 503 or a lost answer.",
    ),
]


def fingerprint(body: RunCreate) -> str:
    """What makes two requests 'the same'; secret values are left out (only header names count)."""
    # Fields added later count only when set, so a request's fingerprint is what it was before they existed.
    unset = {
        name
        for name in ("max_cost_usd", "judge_cache", "repeats")
        if getattr(body, name) == RunCreate.model_fields[name].default
    }
    data = body.model_dump(mode="json", exclude={"github_token", "oracle_headers", *unset})
    data["oracle_header_names"] = sorted(body.oracle_headers or {})
    data["has_github_token"] = body.github_token is not None
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


def idempotent_run_id(user_id: str, key: str) -> str:
    """The run id an (user, Idempotency-Key) pair names: 'k' + 25 base32 characters (125 bits) of a hash,
    alphanumeric and 26 long like a ULID, and never equal to one (ULIDs are upper case)."""
    digest = hashlib.sha256(f"{user_id}\0{key}".encode()).digest()
    return "k" + base64.b32encode(digest).decode().lower()[:25]


async def _repeat(services: Services, request: RunRequested, fp: str) -> Response:
    """The answer to a repeated Idempotency-Key: the first request's run (200), if the body is the same."""
    if request.request_fingerprint != fp:
        raise RequestRejected(
            "this Idempotency-Key was already used for a different request; use a new key for a new run"
        )
    state = await services.read_models.get_run(request.run_id)
    current = state.status.name if state is not None and state.visible else Status.PENDING.name
    return _created(request.run_id, current, request.created_at, status.HTTP_200_OK)


def _created(run_id: str, current: str, created_at: datetime, code: int) -> Response:
    """`RunCreated(...)` as JSON, byte for byte, without building and re-validating the model (as
    `run_view_json`; a unit test holds the two equal)."""
    body = orjson.dumps({"run_id": run_id, "status": current, "created_at": created_at}, option=orjson.OPT_UTC_Z)
    return Response(body, status_code=code, media_type="application/json")


class SubmitRunRoute(APIRoute):
    """POST /runs answered by `submit_run` instead of FastAPI's generic request handler.

    The declared endpoint (`create_run`) keeps documenting the route (body model, header, security), but the
    generic handler re-reads the body, decodes its JSON a second time (the edge layer already decoded it,
    api/edge.py) and walks a dependency tree: about a fifth of this route's CPU. `submit_run` makes the same
    checks in the same order with direct calls: identity (401), then the header and the body together (one
    422 listing every error, FastAPI's shape)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return submit_run


_IDEMPOTENCY_KEY = TypeAdapter(IdempotencyKey)


async def submit_run(request: Request) -> Response:
    user, body, key = await read_submission(request)
    return await create_run(body, user, request, key)


async def read_submission(request: Request) -> tuple[Principal, RunCreate, str | None]:
    """The caller, the body and the Idempotency-Key of a POST /runs, checked as FastAPI's generic handler
    checks them (a unit test holds the two answers equal for good and bad requests)."""
    user = await get_user_or_wallet(request)
    errors: list[dict[str, Any]] = []
    key = request.headers.get("idempotency-key")
    if key is not None:
        try:
            key = _IDEMPOTENCY_KEY.validate_python(key)
        except ValidationError as exc:
            errors += _located(exc, ("header", "Idempotency-Key"))
    body: RunCreate | None = None
    value = await _body_value(request)
    if value is _MISSING:
        errors.append({"type": "missing", "loc": ("body",), "msg": "Field required", "input": None})
    else:
        try:
            body = RunCreate.model_validate(value, from_attributes=True)
        except ValidationError as exc:
            errors += _located(exc, ("body",))
    if errors or body is None:
        raise RequestValidationError(errors, body=value if value is not _MISSING else None)
    return user, body, key


_MISSING: Any = object()


async def _body_value(request: Request) -> Any:
    """The body as FastAPI would hand it to validation: the edge layer's decoded JSON, else the bytes (a body
    not declared as JSON: FastAPI's strict content type), else missing."""
    scope = request.scope
    if PARSED_JSON in scope and "content-type" in request.headers:  # FastAPI reads JSON only when declared
        return scope[PARSED_JSON]
    raw = await request.body()
    return raw if raw else _MISSING


def _located(exc: ValidationError, prefix: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{**error, "loc": prefix + tuple(error["loc"])} for error in exc.errors(include_url=False)]


async def create_run(
    body: RunCreate,
    user: UserDep,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Start a verification run. A 201 means the request event is stored in JetStream; a 5xx means no run
    was started. With an `Idempotency-Key`, a retry returns the same run with 200. (Served by `submit_run`.)"""
    # The process's resources straight from app.state: each dependency node costs tens of µs per request.
    state = request.app.state
    services: Services = state.services
    admission: RunAdmission = state.run_admission
    fp = None
    if idempotency_key is not None:
        fp = fingerprint(body)
        run_id = idempotent_run_id(user.user_id, idempotency_key)
        known = await request_of(services.bus, services.store, services.subjects, run_id)
        if known is not None:  # a replay: no validation, no rate limit, no publish
            return await _repeat(services, known, fp)
    else:
        run_id = new_ulid()  # nothing to look up: a fresh id names no stored run
    created_at = utcnow()
    secrets = RunSecrets(github_token=body.github_token, oracle_headers=body.oracle_headers or {})
    secret_ref = None if secrets.is_empty() else run_id
    # One Redis round trip: the rate limit, the list's read-your-writes note of the run if admitted, and the
    # construct's owner. Sent first and awaited once the request is checked and its event built, so that work
    # overlaps the round trip; the checks' verdict counts only after the admission's (a 429 comes first), and
    # a refused request (422) uses the budget too.
    admitting = admission.begin(user.user_id, run_id, created_at, body.construct_id)
    try:
        prepared: Envelope | Exception = _request_event(body, user, state.settings, run_id, created_at, fp, secret_ref)
    except Exception as exc:  # answered below, after the admission's own answer
        prepared = exc
    owner = await admitting
    try:
        if isinstance(prepared, Exception):
            raise prepared
        # Only an admitted caller makes the API resolve a host (which may take seconds).
        await check_oracle_host(body, state.settings)
        # The first user to certify a construct_id owns it (README "Certificates"); others are refused here.
        check_construct_owner(owner, body.construct_id, user.user_id, admin=user.is_admin)
        if secret_ref is not None:
            await services.secrets.put(secret_ref, secrets)
        ack = await publish_event(services.bus, services.metrics, prepared)
    except Exception:  # not accepted (a 4xx or 5xx): the run must not stay listed
        await _forget(admission.recent, user, run_id)
        raise
    if ack.duplicate:
        # A concurrent request with this key, or an earlier attempt whose answer was lost, stored it first.
        known = await request_of(services.bus, services.store, services.subjects, run_id)
        if known is None:
            raise BusError("the run's request is stored but not readable yet; retry with the same Idempotency-Key")
        return await _repeat(services, known, fingerprint(body) if fp is None else fp)
    return _created(run_id, Status.PENDING.name, created_at, status.HTTP_201_CREATED)


router.add_api_route(
    "/runs",
    create_run,
    methods=["POST"],
    route_class_override=SubmitRunRoute,
    status_code=status.HTTP_201_CREATED,
    response_model=RunCreated,  # documents the body; the handler answers its JSON itself (_created)
    responses=r.merge(
        {200: {"model": RunCreated, "description": "The run an earlier request with this Idempotency-Key started"}},
        r.PROTECTED,
        r.MALFORMED_BODY,
        r.RATE_LIMITED,
        {503: {"model": ErrorBody, "description": "Not accepted, no run started: retry (same Idempotency-Key)"}},
        {403: {"model": ErrorBody, "description": "The construct_id belongs to another user (its first certifier)"}},
    ),
)


async def _forget(recent: RecentRuns, user: Principal, run_id: str) -> None:
    """Drop the note of a run that was not published; a note left behind only costs the list a lookup."""
    try:
        await recent.forget(user.user_id, [run_id])
    except ReadModelError as exc:
        log.warning("api.recent_runs_unavailable", error=str(exc), runId=run_id)


def _request_event(
    body: RunCreate,
    user: Principal,
    settings: Settings,
    run_id: str,
    created_at: datetime,
    fp: str | None,
    secret_ref: str | None,
) -> Envelope:
    """The run's `verify.run.requested` event, after the checks that ask nobody (422)."""
    weights = check_run_request(body, settings)
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
        max_cost_usd=body.max_cost_usd,
        judge_cache=body.judge_cache,
        secret_ref=secret_ref,
        created_at=created_at,
        request_fingerprint=fp,
        repeats=body.repeats,
    )
    return make_event(payload)


async def load_run(services: Services, run_id: str, reader: RunReader | None = None) -> RunState | None:
    """`RunSource.load` for a caller holding the services (the WebSocket stream)."""
    if reader is None:
        reader = RunReader(
            services.read_models, freshness=Freshness.of(services.settings.redis_prefix, services.settings.partitioning)
        )
    return await RunSource(reader, services.store, services.bus, services.subjects).load(run_id)


@router.get(
    "/runs/{run_id}",
    response_model=RunView,  # documents the body; the handler answers its JSON itself (run_view_json)
    responses=r.merge(r.PROTECTED, r.NOT_FOUND, NOT_LEVEL),
    # Authenticated in the handler (first thing, as the dependency would): FastAPI solving a sub-dependency
    # costs about as much CPU as the rest of this route. The document still says what it accepts.
    openapi_extra={"security": SECURITY_REQUIREMENT},
)
async def get_run(run_id: str, request: Request) -> Response:
    """One run: yours, or anyone's for an admin. Another user's run is a 404, as if it did not exist. While
    the read models are rebuilt, the run is read from the event log (503 with `Retry-After` if it does not
    answer in time)."""
    user = await get_user_or_wallet(request)
    state = request.app.state
    try:
        run = await state.run_source.load(run_id)
    except StoreError as exc:
        raise not_level(exc) from exc
    if run is None or not user.can_see(run.user_id):
        raise NotFound(f"run {run_id} not found")
    return Response(run_view_json(run), media_type="application/json")


def run_view_json(state: RunState) -> bytes:
    """`RunView.model_validate(public_view(state)).model_dump_json()`, byte for byte, without building the
    model: the view's fields are already plain values (a unit test holds the two equal)."""
    return orjson.dumps(public_view(state), option=orjson.OPT_UTC_Z)


@router.get("/runs", response_model=RunList, responses=r.PROTECTED)
async def list_runs(
    user: UserDep,
    read_models: ReadModelsDep,
    runs: RunSourceDep,
    api_keys: ApiKeysDep,
    status_filter: Annotated[StatusName | None, Query(alias="status")] = None,
    construct_id: Annotated[str | None, Query(max_length=128)] = None,
    created_after: Annotated[
        AwareDatetime | None, Query(description="Only runs created at or after this instant (with a UTC offset)")
    ] = None,
    created_before: Annotated[
        AwareDatetime | None, Query(description="Only runs created before this instant (exclusive; with a UTC offset)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> RunList:
    """The caller's runs (an admin's: everyone's), newest first; `total` counts the filtered set.

    Runs the caller started moments ago are listed too, before the coordinator projected them."""
    wanted = Status[status_filter] if status_filter else None
    # Before the read model: a run projected in between then shows up there and is dropped from `unseen`.
    unseen = await _unprojected(read_models, runs, api_keys.recent_runs(), user, wanted, construct_id)
    states, total = await read_models.list_runs(
        user_id=None if user.is_admin else user.user_id,
        status=wanted,
        construct_id=construct_id,
        created_after=created_after,
        created_before=created_before,
        limit=limit,
        offset=offset,
    )
    listed = {s.run_id for s in states}

    def in_range(state: RunState) -> bool:
        at = state.created_at
        if at is None:
            return created_after is None and created_before is None
        return (created_after is None or at >= created_after) and (created_before is None or at < created_before)

    extra = [s for s in unseen if s.run_id not in listed and in_range(s)]
    total += len(extra)
    if offset == 0 and extra:  # they are the newest runs, so they belong on the first page
        states = sorted([*states, *extra], key=_newest_first)[:limit]
    return RunList(
        runs=[RunView.model_validate(public_view(s)) for s in states], total=total, limit=limit, offset=offset
    )


def _newest_first(state: RunState) -> float:
    return -(state.created_at.timestamp() if state.created_at is not None else 0.0)


async def _unprojected(
    read_models: ReadModels,
    runs: RunSource,
    recent: RecentRuns,
    user: Principal,
    wanted: Status | None,
    construct_id: str | None,
) -> list[RunState]:
    """The caller's recently accepted runs the read model does not show yet (read from the stream)."""
    run_ids = await recent.run_ids(user.user_id)
    unseen: list[RunState] = []
    projected: list[str] = []
    for run_id in run_ids:
        state = await read_models.get_run(run_id)
        if state is not None and state.visible:
            projected.append(run_id)
            continue
        try:
            state = await runs.load(run_id)
        except (BusError, StoreError):
            continue  # only a hint: without NATS (or the log, while rebuilding) the list shows what the model has
        if state is None or state.user_id != user.user_id:
            continue
        if (wanted is None or state.status is wanted) and matches_construct(state.construct_id, construct_id):
            unseen.append(state)
    await recent.forget(user.user_id, projected)
    return unseen
