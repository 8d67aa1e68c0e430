"""Pure projections: `apply(state, event) -> state`, no I/O.

Every rule is a join (max, union, min-by-event-id) so the result depends only on the *set* of events
seen: redelivery (duplicates) and reordering cannot change a read model.
"""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from echelon_platform.domain.envelope import Envelope

if TYPE_CHECKING:
    from collections.abc import Mapping


class Event(Protocol):
    """What a projection reads of an event: an Envelope, or a lighter row from the event log."""

    @property
    def event_id(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> Mapping[str, Any]: ...


MAX_ERROR_CHARS = 2000


class Status(IntEnum):
    PENDING = 0
    INGESTING = 1
    INVOKING = 2
    SCORING = 3
    CERTIFYING = 4
    COMPLETED = 5
    FAILED = 6

    @property
    def terminal(self) -> bool:
        return self >= Status.COMPLETED


_IMPLIED: dict[str, Status] = {
    "verify.run.requested": Status.PENDING,
    "verify.run.ingesting": Status.INGESTING,
    "verify.run.ingested": Status.INVOKING,
    "verify.replay.requested": Status.INVOKING,
    "verify.replay.invoked": Status.SCORING,
    "verify.replay.scored": Status.SCORING,
    "verify.replay.failed": Status.SCORING,
    "verify.run.certifying": Status.CERTIFYING,
    "verify.certificate.issued": Status.CERTIFYING,
}


class RunState(NamedTuple):
    """The run read model. `status` is derived; the stored fields are all joins.

    A NamedTuple rather than a frozen dataclass: `_replace` is several times cheaper than
    `dataclasses.replace`, and replay applies it once per event.
    """

    run_id: str
    user_id: str | None = None
    construct_id: str | None = None
    repo_url: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    rank: Status = Status.PENDING  # highest non-terminal status implied by any event
    total: int | None = None
    done: frozenset[str] = frozenset()  # replay ids scored or failed
    scored: frozenset[str] = frozenset()
    certificate_id: str | None = None
    # The terminal event with the smallest event id wins, whatever order events arrive in.
    terminal_event_id: str | None = None
    terminal: Status | None = None
    error: str | None = None
    secret_ref: str | None = None

    @property
    def status(self) -> Status:
        if self.terminal is not None:
            return self.terminal
        if self.total is not None and len(self.done) >= self.total and self.rank >= Status.INVOKING:
            return max(self.rank, Status.CERTIFYING)
        return self.rank

    @property
    def progress(self) -> int:
        return len(self.done)

    @property
    def visible(self) -> bool:
        """A run is served once its request event has been projected."""
        return self.user_id is not None

    @property
    def awaiting_certificate(self) -> bool:
        return self.status is Status.CERTIFYING and self.certificate_id is None


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def apply(state: RunState, event: Event) -> RunState:
    """Fold one event into a run's state. Idempotent, commutative and associative over events.

    Reads the payload dict directly: events reach a projection only after the coordinator validated
    them (or from the event table, which holds validated events only), and replay speed matters.
    """
    p = event.payload
    changes: dict[str, Any] = {"updated_at": _later(state.updated_at, event.timestamp)}
    implied = _IMPLIED.get(event.topic)
    if implied is not None and implied > state.rank:
        changes["rank"] = implied
    match event.topic:
        case "verify.run.requested":
            changes.update(
                user_id=p["user_id"],
                construct_id=p["construct_id"],
                repo_url=p["repo_url"],
                created_at=_dt(p["created_at"]),
                secret_ref=p.get("secret_ref"),
            )
        case "verify.run.ingested":
            changes["total"] = p["total"]
        case "verify.replay.scored":
            changes["done"] = state.done | {p["replay_id"]}
            changes["scored"] = state.scored | {p["replay_id"]}
        case "verify.replay.failed":
            changes["done"] = state.done | {p["replay_id"]}
        case "verify.certificate.issued":
            changes["certificate_id"] = p["certificate"]["certificate_id"]
        case "verify.run.completed" | "verify.run.failed":
            if state.terminal_event_id is None or event.event_id < state.terminal_event_id:
                changes["terminal_event_id"] = event.event_id
                if event.topic == "verify.run.completed":
                    changes.update(terminal=Status.COMPLETED, error=None)
                else:
                    changes.update(terminal=Status.FAILED, error=str(p["reason"])[:MAX_ERROR_CHARS])
        case _:
            pass
    return state._replace(**changes)


def _dt(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def fold(run_id: str, events: list[Envelope]) -> RunState:
    state = RunState(run_id=run_id)
    for event in events:
        state = apply(state, event)
    return state


# ---- serialisation of the read model (what Redis holds) ----


def to_record(state: RunState) -> dict[str, Any]:
    return {
        "run_id": state.run_id,
        "user_id": state.user_id,
        "construct_id": state.construct_id,
        "repo_url": state.repo_url,
        "created_at": state.created_at.isoformat() if state.created_at else None,
        "updated_at": state.updated_at.isoformat() if state.updated_at else None,
        "rank": int(state.rank),
        "total": state.total,
        "done": sorted(state.done),
        "scored": sorted(state.scored),
        "certificate_id": state.certificate_id,
        "terminal_event_id": state.terminal_event_id,
        "terminal": int(state.terminal) if state.terminal is not None else None,
        "error": state.error,
        "secret_ref": state.secret_ref,
    }


def from_record(record: dict[str, Any]) -> RunState:
    def dt(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return RunState(
        run_id=record["run_id"],
        user_id=record["user_id"],
        construct_id=record["construct_id"],
        repo_url=record["repo_url"],
        created_at=dt(record["created_at"]),
        updated_at=dt(record["updated_at"]),
        rank=Status(record["rank"]),
        total=record["total"],
        done=frozenset(record["done"]),
        scored=frozenset(record["scored"]),
        certificate_id=record["certificate_id"],
        terminal_event_id=record["terminal_event_id"],
        terminal=Status(record["terminal"]) if record["terminal"] is not None else None,
        error=record["error"],
        secret_ref=record["secret_ref"],
    )


def public_view(state: RunState) -> dict[str, Any]:
    """What `GET /runs/{id}` answers."""
    return {
        "run_id": state.run_id,
        "status": state.status.name,
        "progress": state.progress,
        "total": state.total,
        "construct_id": state.construct_id,
        "repo_url": state.repo_url,
        "error": state.error,
        "certificate_id": state.certificate_id,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
    }
