"""Rescore a completed run (admins): score the oracle replies its log holds with another methodology version
or judge, with no oracle call.

The rescore is a new run (`verify.run.requested` with `rescore` naming the source run and certificate), so it
goes through the score and certify stages like any run: the single writer logs it, the certify stage signs
its certificate, `rederive` re-checks it, and the new certificate links to the first (`rescored_from`). Its
id is derived from (source run, methodology, judge[, Idempotency-Key]): asking again answers the same run.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Annotated

import orjson
import structlog
from fastapi import APIRouter, Header, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api import responses as r
from api.deps import UserDep
from api.methodology_registry import registered
from api.publishing import publish
from api.runs import _created, load_run
from api.schemas import ErrorBody, RunCreated
from echelon_platform.adapters.run_requests import request_of
from echelon_platform.adapters.services import Services
from echelon_platform.domain.envelope import utcnow
from echelon_platform.domain.events import RescoreSpec, RunRequested
from echelon_platform.domain.projections import Status
from echelon_platform.errors import Forbidden, NotFound, RequestRejected

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/api/v1/verification", tags=["runs"])
RunId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9]+$")]
# The judges a stage can build (pipeline_workers/scoring/factory.py): the offline scorer or an Anthropic model.
JUDGE = re.compile(r"^(offline|anthropic:[A-Za-z0-9][A-Za-z0-9._-]{0,99})$")


class RescoreCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    methodology_version: str = Field(
        pattern=r"^v[0-9]+(\.[0-9]+)*$", max_length=32, description="A methodology version registered in the log"
    )
    judge: str | None = Field(
        default=None,
        max_length=120,
        description="`offline` or `anthropic:<model>`; default: the judges the score stage is configured with",
    )


def rescore_run_id(source_run_id: str, body: RescoreCreate, key: str | None) -> str:
    """'r' + 25 base32 characters of a hash of what is asked: the same request names the same run."""
    text = orjson.dumps([source_run_id, body.methodology_version, body.judge, key])
    return "r" + base64.b32encode(hashlib.sha256(text).digest()).decode().lower()[:25]


@router.post(
    "/runs/{run_id}/rescore",
    status_code=status.HTTP_201_CREATED,
    response_model=RunCreated,
    responses=r.merge(
        {200: {"model": RunCreated, "description": "This rescore was asked for before: its run"}},
        r.PROTECTED,
        r.MALFORMED_BODY,
        r.NOT_FOUND,
        {403: {"model": ErrorBody, "description": "Only admins rescore runs"}},
    ),
)
async def rescore_run(
    run_id: RunId,
    body: RescoreCreate,
    user: UserDep,
    request: Request,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> Response:
    """Start a run that scores the oracle replies run `run_id` logged, with `methodology_version` and
    `judge`; its certificate names the first in `rescored_from`. The oracle is not called."""
    if not user.is_admin:
        raise Forbidden("only admins rescore runs")
    services: Services = request.app.state.services
    if body.judge is not None and not JUDGE.match(body.judge):
        raise RequestRejected(f"unknown judge {body.judge!r}: use 'offline' or 'anthropic:<model>'")
    new_id = rescore_run_id(run_id, body, idempotency_key)
    known = await request_of(services.bus, services.store, services.subjects, new_id)
    if known is not None:
        state = await services.read_models.get_run(new_id)
        current = state.status.name if state is not None and state.visible else Status.PENDING.name
        return _created(new_id, current, known.created_at, status.HTTP_200_OK)
    source_state = await load_run(services, run_id)
    source = await request_of(services.bus, services.store, services.subjects, run_id)
    if source_state is None or source is None:
        raise NotFound(f"run {run_id} not found")
    if source_state.certificate_id is None:
        raise RequestRejected(
            f"run {run_id} is {source_state.status.name}: only a completed run's replies can be rescored"
        )
    if body.methodology_version not in {m.version for m in await registered(services.store)}:
        raise RequestRejected(f"methodology {body.methodology_version} is not registered (GET /api/v1/methodology)")
    created_at = utcnow()
    rescore = source.model_copy(
        update={
            "run_id": new_id,
            "created_at": created_at,
            "secret_ref": None,  # no oracle call: the oracle's secrets stay with the source run
            "request_fingerprint": None,
            "rescore": RescoreSpec(
                source_run_id=run_id,
                source_certificate_id=source_state.certificate_id,
                methodology_version=body.methodology_version,
                judge=body.judge,
                requested_by=user.user_id,
            ),
        }
    )
    ack = await publish(services.bus, services.metrics, RunRequested.model_validate(rescore.model_dump()))
    log.info("api.rescore", runId=new_id, source=run_id, methodology=body.methodology_version, judge=body.judge)
    code = status.HTTP_200_OK if ack.duplicate else status.HTTP_201_CREATED
    return _created(new_id, Status.PENDING.name, created_at, code)
