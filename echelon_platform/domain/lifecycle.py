"""The run lifecycle in one place: statuses, what each event implies, and how a run ends.

A run ends exactly once, decided in **log order**: the first of `verify.certificate.issued` and
`verify.run.failed` by log position wins. A certificate decides COMPLETED (`verify.run.completed` only
announces it); a failure decides FAILED, and a certificate logged after it is never public. Positions are
assigned by the single writer, so the live projection and a replay of the log decide the same way, whatever
the clocks of the processes that published the events.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from echelon_platform.domain.events import (
    CertificateIssued,
    ReplayFailed,
    ReplayInvoked,
    ReplayRequested,
    ReplayScored,
    RunCertifying,
    RunFailed,
    RunIngested,
    RunIngesting,
    RunRequested,
)

# Events after which a run may be ready for its certificate.
CERTIFY_TRIGGERS = frozenset({RunIngested.TOPIC, ReplayScored.TOPIC, ReplayFailed.TOPIC})


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


# The least status each event proves a run has reached (statuses only move forward).
IMPLIED: dict[str, Status] = {
    RunRequested.TOPIC: Status.PENDING,
    RunIngesting.TOPIC: Status.INGESTING,
    RunIngested.TOPIC: Status.INVOKING,
    ReplayRequested.TOPIC: Status.INVOKING,
    ReplayInvoked.TOPIC: Status.SCORING,
    ReplayScored.TOPIC: Status.SCORING,
    ReplayFailed.TOPIC: Status.SCORING,
    RunCertifying.TOPIC: Status.CERTIFYING,
    CertificateIssued.TOPIC: Status.CERTIFYING,
}


class Decision(NamedTuple):
    """A candidate for a run's end: the log position of the event and what it says."""

    seq: int
    value: str  # the certificate id, or the failure reason


def earlier(current: Decision | None, candidate: Decision) -> Decision:
    """Keep the candidate with the lower log position (a join: order and repetition do not matter)."""
    return candidate if current is None or candidate.seq < current.seq else current


def ending(certificate: Decision | None, failure: Decision | None) -> str | None:
    """Which event ended the run: CertificateIssued.TOPIC, RunFailed.TOPIC, or None while it is still running."""
    if certificate is not None and (failure is None or certificate.seq < failure.seq):
        return CertificateIssued.TOPIC
    if failure is not None:
        return RunFailed.TOPIC
    return None


def status_of(rank: Status, total: int | None, done: int, ended_by: str | None, completion_announced: bool) -> Status:
    """A run's status from what the log holds about it."""
    if ended_by == RunFailed.TOPIC:
        return Status.FAILED
    if ended_by == CertificateIssued.TOPIC:
        return Status.COMPLETED if completion_announced else Status.CERTIFYING
    if total is not None and done >= total and rank >= Status.INVOKING:
        return max(rank, Status.CERTIFYING)
    return rank


def ready_to_certify(status: Status, ended_by: str | None) -> bool:
    """Every replay is done and nothing has ended the run yet: the certifier should issue its certificate."""
    return status is Status.CERTIFYING and ended_by is None


def needs_completion(ended_by: str | None, completion_announced: bool) -> bool:
    """A certificate decided the run but `run.completed` is not logged (a partial publish): certify again."""
    return ended_by == CertificateIssued.TOPIC and not completion_announced
