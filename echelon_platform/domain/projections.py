"""Pure projections: `apply(state, event, seq) -> state`, no I/O.

Every rule is a join (max, union, min by log position) so the result depends only on the *set* of
(event, log position) pairs seen: redelivery (duplicates) and reordering cannot change a read model. How a
run ends is the lifecycle's rule (`lifecycle.py`), decided by log position.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from echelon_platform.domain.events import (
    CertificateIssued,
    MethodologyRegistered,
    ReplayFailed,
    ReplayScored,
    RunCompleted,
    RunFailed,
    RunIngested,
    RunRequested,
)
from echelon_platform.domain.lifecycle import (
    IMPLIED,
    Decision,
    Status,
    earlier,
    ending,
    needs_completion,
    ready_to_certify,
    status_of,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["Event", "RunState", "Status", "apply", "fold", "from_record", "public_view", "to_record"]

# Events not about a run (their correlation id is a registry's, e.g. `run-methodology`): ignored here, so
# they never make a run appear, not even as an "active" one the watchdog would judge.
NOT_RUN_EVENTS = frozenset({MethodologyRegistered.TOPIC})
# Bumped whenever the stored shape or a rule changes: read models of another generation are rebuilt.
READ_MODEL_GENERATION = 6  # 3: unsigned certificates left out; 4: leaderboard aggregates; 5: per-judge rows;
# 6: rescores' certificates left out of the aggregates
MAX_ERROR_CHARS = 2000


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


class RunState(NamedTuple):
    """The run read model. `status` is derived; the stored fields are all joins.

    A NamedTuple rather than a frozen dataclass: `_replace` is several times cheaper than
    `dataclasses.replace`, and a rebuild applies it once per event.
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
    certificate: Decision | None = None  # (log position, certificate id)
    failure: Decision | None = None  # (log position, reason)
    completion_announced: bool = False
    secret_ref: str | None = None

    @property
    def ended_by(self) -> str | None:
        return ending(self.certificate, self.failure)

    @property
    def status(self) -> Status:
        return status_of(self.rank, self.total, len(self.done), self.ended_by, self.completion_announced)

    @property
    def certificate_id(self) -> str | None:
        """The run's public certificate: only one that decided the run."""
        return self.certificate.value if self.certificate and self.ended_by == CertificateIssued.TOPIC else None

    @property
    def error(self) -> str | None:
        return self.failure.value if self.failure and self.ended_by == RunFailed.TOPIC else None

    @property
    def progress(self) -> int:
        return len(self.done)

    @property
    def visible(self) -> bool:
        """A run is served once its request event has been projected."""
        return self.user_id is not None

    @property
    def awaiting_certificate(self) -> bool:
        """The certifier has work: every replay is done and no certificate or failure is logged, or a
        certificate is logged but its `run.completed` is not."""
        return ready_to_certify(self.status, self.ended_by) or needs_completion(
            self.ended_by, self.completion_announced
        )


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def apply(state: RunState, event: Event, seq: int) -> RunState:
    """Fold one event, stored at log position `seq`, into a run's state. Idempotent, commutative and
    associative over (event, position) pairs.

    Reads the payload dict directly: events reach a projection only after the coordinator validated
    them (or from the event table, which holds validated events only), and rebuild speed matters.
    """
    if event.topic in NOT_RUN_EVENTS:
        return state
    p = event.payload
    changes: dict[str, Any] = {"updated_at": _later(state.updated_at, event.timestamp)}
    implied = IMPLIED.get(event.topic)
    if implied is not None and implied > state.rank:
        changes["rank"] = implied
    match event.topic:
        case RunRequested.TOPIC:
            changes.update(
                user_id=p["user_id"],
                construct_id=p["construct_id"],
                repo_url=p["repo_url"],
                created_at=_dt(p["created_at"]),
                secret_ref=p.get("secret_ref"),
            )
        case RunIngested.TOPIC:
            changes["total"] = p["total"]
        case ReplayScored.TOPIC:
            changes["done"] = state.done | {p["replay_id"]}
            changes["scored"] = state.scored | {p["replay_id"]}
        case ReplayFailed.TOPIC:
            changes["done"] = state.done | {p["replay_id"]}
        case CertificateIssued.TOPIC:
            changes["certificate"] = earlier(state.certificate, Decision(seq, p["certificate"]["certificate_id"]))
        case RunFailed.TOPIC:
            changes["failure"] = earlier(state.failure, Decision(seq, str(p["reason"])[:MAX_ERROR_CHARS]))
        case RunCompleted.TOPIC:
            changes["completion_announced"] = True
        case _:
            pass
    return state._replace(**changes)


def _dt(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def fold(run_id: str, events: Iterable[tuple[Event, int]]) -> RunState:
    """A run's state from (event, log position) pairs."""
    state = RunState(run_id=run_id)
    for event, seq in events:
        state = apply(state, event, seq)
    return state


def public_certificate(state: RunState, certificate: Mapping[str, Any]) -> bool:
    """Whether a logged certificate is the run's public one (not one logged after the run failed)."""
    return bool(state.certificate_id == certificate["certificate_id"])


# ---- serialisation of the read model (what Redis holds) ----


def _decision(value: list[Any] | None) -> Decision | None:
    return Decision(int(value[0]), str(value[1])) if value else None


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
        "certificate": list(state.certificate) if state.certificate else None,
        "failure": list(state.failure) if state.failure else None,
        "completion_announced": state.completion_announced,
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
        certificate=_decision(record["certificate"]),
        failure=_decision(record["failure"]),
        completion_announced=record["completion_announced"],
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
