"""`GET /runs/{id}/events`: a run's event history, read from the log (Postgres `events`), in log order.

The envelopes are returned as stored: oracle replies and ground-truth records included. Events never
hold secrets (the request names a `secret_ref`, never a token), so nothing needs redacting here.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from api import responses as r
from api.deps import LogReaderDep, RunSourceDep, UserDep
from echelon_platform.errors import NotFound

MAX_PAGE = 500
router = APIRouter(prefix="/api/v1/verification", tags=["runs"])


class LoggedEvent(BaseModel):
    seq: int = Field(description="Position in the event log (Postgres), increasing in the order events were logged")
    event: dict[str, Any] = Field(description="The envelope as published (camelCase keys, as on the stream)")


class RunHistory(BaseModel):
    run_id: str
    events: list[LoggedEvent]
    next_after: int | None = Field(
        description="Pass as `after` for the next page; null when this page reached the end of the log for now "
        "(a live run may log more: poll again with `after` = the last event's seq)"
    )


@router.get(
    "/runs/{run_id}/events",
    response_model=RunHistory,
    responses=r.merge(r.PROTECTED, r.NOT_FOUND),
)
async def run_history(
    run_id: Annotated[str, Path(min_length=1, max_length=64)],
    user: UserDep,
    runs: RunSourceDep,
    log: LogReaderDep,
    after: Annotated[int, Query(ge=0, description="Log position already seen: events after it follow")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> RunHistory:
    """The run's logged events, oldest first, paged by log position. Yours, or anyone's for an admin; another
    user's run is a 404. Events accepted but not logged yet (the writer is behind) follow on a later call."""
    state = await runs.load(run_id)
    if state is None or not user.can_see(state.user_id):
        raise NotFound(f"run {run_id} not found")
    rows = await log.run_events_page(run_id, after=after, limit=limit + 1)
    page = rows[:limit]
    more = len(rows) > limit
    return RunHistory(
        run_id=run_id,
        events=[LoggedEvent(seq=seq, event=envelope.model_dump(mode="json", by_alias=True)) for seq, envelope in page],
        next_after=page[-1][0] if more else None,
    )
