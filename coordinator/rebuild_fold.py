"""The rebuild's fold: `projections.apply`'s rules on one mutable accumulator per run.

`apply` returns a new RunState per event (a `_replace`, and a frozenset copy per finished replay, so a run
with n replays costs O(n²)). A rebuild folds millions of events, so it keeps each run's joins in place and
builds the RunState once, when it is written. `apply` stays the one statement of the rules: a hypothesis
test (tests/unit/test_rebuild_fold.py) holds `RunFold` equal to `fold` on any sequence of events, and any
topic this module does not know is folded by `apply` itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from echelon_platform.domain.events import (
    TOPICS,
    CertificateIssued,
    ReplayFailed,
    ReplayScored,
    RunCompleted,
    RunFailed,
    RunIngested,
    RunRequested,
)
from echelon_platform.domain.lifecycle import IMPLIED, Decision, Status, earlier
from echelon_platform.domain.projections import MAX_ERROR_CHARS, NOT_RUN_EVENTS, RunState, apply
from echelon_platform.ports.log import LogEvent

# Topics whose payload the fold reads; every other topic only counts through its topic and timestamp.
PAYLOAD_TOPICS = (
    RunRequested.TOPIC,
    RunIngested.TOPIC,
    ReplayScored.TOPIC,
    ReplayFailed.TOPIC,
    CertificateIssued.TOPIC,
    RunFailed.TOPIC,
)
# Topics `apply` gives no payload-specific rule (only updated_at and the implied rank); the test holds this.
PLAIN = frozenset(TOPICS) - {
    RunRequested.TOPIC,
    RunIngested.TOPIC,
    ReplayScored.TOPIC,
    ReplayFailed.TOPIC,
    CertificateIssued.TOPIC,
    RunFailed.TOPIC,
    RunCompleted.TOPIC,
}


# One dict lookup per event: the status a topic implies (at least PENDING, which every rank meets) and its
# rule. Topics not listed (and NOT_RUN_EVENTS) take the slow path.
_PLAIN, _SCORED, _FAILED, _REQUESTED, _INGESTED, _CERTIFICATE, _RUN_FAILED, _COMPLETED = (
    "plain",
    "scored",
    "failed",
    "requested",
    "ingested",
    "certificate",
    "run_failed",
    "completed",
)
_KINDS = {
    ReplayScored.TOPIC: _SCORED,
    ReplayFailed.TOPIC: _FAILED,
    RunRequested.TOPIC: _REQUESTED,
    RunIngested.TOPIC: _INGESTED,
    CertificateIssued.TOPIC: _CERTIFICATE,
    RunFailed.TOPIC: _RUN_FAILED,
    RunCompleted.TOPIC: _COMPLETED,
    **dict.fromkeys(PLAIN, _PLAIN),
}
_RULES: dict[str, tuple[Status, str]] = {
    topic: (IMPLIED.get(topic, Status.PENDING), kind) for topic, kind in _KINDS.items() if topic not in NOT_RUN_EVENTS
}


class RunFold:
    """One run's state under construction; `add` is `apply` for one (event, log position)."""

    __slots__ = (
        "certificate",
        "completed",
        "done",
        "failure",
        "rank",
        "requested",
        "run_id",
        "scored",
        "total",
        "updated_at",
    )

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        # user_id, construct_id, repo_url, created_at, secret_ref: the last request event's, as in `apply`
        self.requested: tuple[str | None, str | None, str | None, datetime | None, str | None] | None = None
        self.updated_at: datetime | None = None
        self.rank = Status.PENDING
        self.total: int | None = None
        self.done: set[str] = set()
        self.scored: set[str] = set()
        self.certificate: Decision | None = None
        self.failure: Decision | None = None
        self.completed = False

    def add(self, topic: str, timestamp: datetime, payload: dict[str, Any] | None, seq: int) -> None:
        rule = _RULES.get(topic)
        if rule is None:
            self._add_other(topic, timestamp, payload or {}, seq)
            return
        updated = self.updated_at
        if updated is None or timestamp > updated:
            self.updated_at = timestamp
        implied, kind = rule
        if implied > self.rank:
            self.rank = implied
        if kind is _PLAIN:
            return
        p: dict[str, Any] = payload or {}
        if kind is _SCORED:
            replay_id = p["replay_id"]
            self.done.add(replay_id)
            self.scored.add(replay_id)
        elif kind is _FAILED:
            self.done.add(p["replay_id"])
        elif kind is _REQUESTED:
            created = p["created_at"]
            self.requested = (
                p["user_id"],
                p["construct_id"],
                p["repo_url"],
                created if isinstance(created, datetime) else datetime.fromisoformat(created),
                p.get("secret_ref"),
            )
        elif kind is _INGESTED:
            self.total = p["total"]
        elif kind is _CERTIFICATE:
            self.certificate = earlier(self.certificate, Decision(seq, p["certificate"]["certificate_id"]))
        elif kind is _RUN_FAILED:
            self.failure = earlier(self.failure, Decision(seq, str(p["reason"])[:MAX_ERROR_CHARS]))
        else:  # _COMPLETED
            self.completed = True

    def _add_other(self, topic: str, timestamp: datetime, payload: dict[str, Any], seq: int) -> None:
        """A topic without a fast rule: `apply` decides, on the state so far."""
        if topic in NOT_RUN_EVENTS:  # as `apply`: not about a run
            return
        if self.updated_at is None or timestamp > self.updated_at:
            self.updated_at = timestamp
        implied = IMPLIED.get(topic)
        if implied is not None and implied > self.rank:
            self.rank = implied
        self._absorb(apply(self.state(), LogEvent("", timestamp, topic, "", payload), seq))

    def state(self) -> RunState:
        user_id = construct_id = repo_url = created_at = secret_ref = None
        if self.requested is not None:
            user_id, construct_id, repo_url, created_at, secret_ref = self.requested
        return RunState(
            run_id=self.run_id,
            user_id=user_id,
            construct_id=construct_id,
            repo_url=repo_url,
            created_at=created_at,
            updated_at=self.updated_at,
            rank=self.rank,
            total=self.total,
            done=frozenset(self.done),
            scored=frozenset(self.scored),
            certificate=self.certificate,
            failure=self.failure,
            completion_announced=self.completed,
            secret_ref=secret_ref,
        )

    def _absorb(self, state: RunState) -> None:
        self.requested = (state.user_id, state.construct_id, state.repo_url, state.created_at, state.secret_ref)
        self.updated_at, self.rank, self.total = state.updated_at, state.rank, state.total
        self.done, self.scored = set(state.done), set(state.scored)
        self.certificate, self.failure = state.certificate, state.failure
        self.completed = state.completion_announced
