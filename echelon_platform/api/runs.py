"""Verification run routes: submit (publish `verify.run.requested`), read one, list."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from ulid import ULID

from coordinator.projections import RunState, Status, apply, public_view
from echelon_platform.api.deps import ServicesDep, SettingsDep, UserDep
from echelon_platform.api.schemas import ErrorBody, RunCreate, RunCreated, RunList, RunView
from echelon_platform.api.validation import validate_run_request
from echelon_platform.envelope import utcnow
from echelon_platform.errors import NotFound
from echelon_platform.events import OracleSpec, RunRequested, make_event
from echelon_platform.secrets import RunSecrets

StatusName = Literal["PENDING", "INGESTING", "INVOKING", "SCORING", "CERTIFYING", "COMPLETED", "FAILED"]

router = APIRouter(prefix="/api/v1/verification", tags=["runs"])

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "Missing or invalid credentials"},
    422: {"model": ErrorBody, "description": "Invalid request"},
}


@router.post(
    "/runs",
    status_code=status.HTTP_201_CREATED,
    response_model=RunCreated,
    responses={**_ERRORS, 503: {"model": ErrorBody, "description": "Event bus unavailable"}},
)
async def create_run(body: RunCreate, user: UserDep, services: ServicesDep, settings: SettingsDep) -> RunCreated:
    """Start a verification run. A 201 means the request event is stored in JetStream (see README)."""
    weights = await validate_run_request(body, settings)
    run_id = str(ULID())
    secrets = RunSecrets(github_token=body.github_token, oracle_headers=body.oracle_headers or {})
    secret_ref = None
    if not secrets.is_empty():
        secret_ref = run_id
        await services.secrets.put(secret_ref, secrets)
    created_at = utcnow()
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
    await services.bus.publish(event)
    services.metrics.events_published.labels(event.topic).inc()
    return RunCreated(run_id=run_id, status=Status.PENDING.name, created_at=created_at)


async def load_run(services: ServicesDep, run_id: str) -> RunState | None:
    """The projected run, or — right after a 201, before the coordinator caught up — the request event itself,
    read straight from the stream, so a GET after a POST never 404s."""
    state = await services.read_models.get_run(run_id)
    if state is not None and state.visible:
        return state
    if not run_id.isalnum() or len(run_id) > 64:
        return None
    requested = await services.bus.last_on_subject(services.subjects.subject("verify.run.requested", run_id))
    if requested is None:
        return None
    return apply(state or RunState(run_id=run_id), requested)


@router.get(
    "/runs/{run_id}",
    response_model=RunView,
    responses={**_ERRORS, 404: {"model": ErrorBody, "description": "No such run (or not yours)"}},
)
async def get_run(run_id: str, user: UserDep, services: ServicesDep) -> RunView:
    state = await load_run(services, run_id)
    if state is None or not user.can_see(state.user_id):
        raise NotFound(f"run {run_id} not found")
    return RunView.model_validate(public_view(state))


@router.get("/runs", response_model=RunList, responses=_ERRORS)
async def list_runs(
    user: UserDep,
    services: ServicesDep,
    status_filter: Annotated[StatusName | None, Query(alias="status")] = None,
    construct_id: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> RunList:
    """The caller's runs (an admin's: everyone's), newest first."""
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
