"""Who may publish what on the bus: the one table of NATS users (roles) and the topics each may publish.

The NATS server enforces it (per-user publish permissions), so a role cannot put another role's events on
the stream at all: the API cannot publish `verify.certificate.issued`, only the certify stage can, and the
writer therefore never sees a certificate that did not come from the certifier. Subscribing is not
restricted (every role reads the stream). The JetStream API each role may use (its own consumers; only
SETUP creates streams and consumers) is derived in bus_access.py. Pure: the embedded server and deploy/
render their `authorization` blocks from these tables, and tests check them against the topic registry.
"""

from __future__ import annotations

from enum import StrEnum

from echelon_platform.domain.events import TOPICS, Subjects
from echelon_platform.domain.partitions import Partitioning


class Role(StrEnum):
    """A NATS user; its name is the user name."""

    API = "api"
    INGEST = "ingest"
    INVOKE = "invoke"
    SCORE = "score"
    CERTIFY = "certify"
    COORDINATOR = "coordinator"
    # Ingest, invoke and score in one process, plus the watchdog: everything but the certifier's topics.
    STAGES = "stages"
    # Reads only (tail, replay): publishes no event.
    READER = "reader"
    # `echelon parked retry` re-publishes stored bytes on their original subject, whatever the topic.
    OPERATOR = "operator"
    # Creates and updates the stream and the durable consumers (`echelon setup`, `stack up`); no events.
    SETUP = "setup"


_WATCHDOG = frozenset({"verify.run.failed"})
# A judge request is logged before it is sent (started) and when it ends (called).
_JUDGE = frozenset({"verify.judge.started", "verify.judge.called"})

PUBLISHES: dict[Role, frozenset[str]] = {
    # An admin registers a new methodology version through the API.
    Role.API: frozenset({"verify.run.requested", "verify.rating.submitted", "verify.methodology.registered"}),
    Role.INGEST: frozenset(
        {"verify.run.ingesting", "verify.run.ingested", "verify.replay.requested", "verify.run.failed"}
    ),
    # The watchdog runs in every worker process and ends stalled runs: every stage role may fail a run.
    # Invoke (the follow-up question) and score call the judge, and log each call.
    Role.INVOKE: frozenset({"verify.replay.invoked", "verify.replay.failed", *_JUDGE}) | _WATCHDOG,
    Role.SCORE: frozenset({"verify.replay.scored", "verify.replay.failed", *_JUDGE}) | _WATCHDOG,
    # The certifier also registers the methodology version it certifies with, at start.
    Role.CERTIFY: frozenset(
        {"verify.certificate.issued", "verify.run.completed", "verify.run.failed", "verify.methodology.registered"}
    ),
    Role.COORDINATOR: frozenset({"verify.run.certifying"}),
    Role.READER: frozenset(),
    Role.SETUP: frozenset(),
    Role.OPERATOR: frozenset(TOPICS),
}
PUBLISHES[Role.STAGES] = PUBLISHES[Role.INGEST] | PUBLISHES[Role.INVOKE] | PUBLISHES[Role.SCORE]

STAGE_ROLES: dict[str, Role] = {"ingest": Role.INGEST, "invoke": Role.INVOKE, "score": Role.SCORE}


def stage_groups(stages: tuple[str, ...] | list[str]) -> list[tuple[Role, tuple[str, ...]]]:
    """Split a worker process's stages into connections: the certifier alone, the others together."""
    others = tuple(s for s in dict.fromkeys(stages) if s != "certify")
    groups = [(role_for_stages(others), others)] if others else []
    if "certify" in stages:
        groups.append((Role.CERTIFY, ("certify",)))
    return groups


def role_for_stages(stages: tuple[str, ...] | list[str]) -> Role:
    """The role of a worker process running `stages` (plus the watchdog, which publishes run.failed).

    Certify shares a process with no other stage: that would give the others the certifier's rights."""
    chosen = set(stages)
    if "certify" in chosen:
        if chosen != {"certify"}:
            raise ValueError("the certify stage runs in a process of its own (its own NATS user)")
        return Role.CERTIFY
    if len(chosen) == 1:
        return STAGE_ROLES[next(iter(chosen))]
    return Role.STAGES


def publish_subjects(role: Role, subject_root: str = "verify", partitions: int = 1) -> list[str]:
    """The event subjects `role` may publish to, under `subject_root` (sorted). The JetStream API subjects
    it may use besides are `bus_access.jetstream_subjects`; no role may publish to `_INBOX.>`: a reply
    forged into another client's inbox (a pull consumer's deliveries) could pass for the server's."""
    subjects = Subjects(subject_root, Partitioning(partitions))
    if role is Role.OPERATOR:
        topics = [subjects.everything]
    else:
        topics = sorted(f for topic in PUBLISHES[role] for f in subjects.publish_filters(topic))
    return topics
