"""The pipeline's stages, in one table: what each consumes and emits, the handler that does its work and the
NATS user it connects as. Pure.

Derived from it: the stage roles' publish permissions (roles.py), the durable consumers and who fetches from
them (bus_access.py), the worker's stages and their wiring (pipeline_workers/pipeline.py), the CLI's stage
choices and docs/stages.md (`python scripts/gen_stages_doc.py`; a test checks it is current).

The other publishers (the API, the writer's certify trigger, the watchdog in every worker process) are not
stages: they have no durable consumer of their own. `PRODUCERS` names them, for the docs and the checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from echelon_platform.domain.events import (
    CertificateIssued,
    JudgeCalled,
    JudgeStarted,
    MethodologyRegistered,
    Payload,
    RatingSubmitted,
    ReplayFailed,
    ReplayInvoked,
    ReplayRequested,
    ReplayScored,
    RunCertifying,
    RunCompleted,
    RunFailed,
    RunIngested,
    RunIngesting,
    RunRequested,
)


@dataclass(frozen=True, slots=True)
class Stage:
    name: str  # also its durable consumer's suffix and its NATS user when it runs alone
    consumes: type[Payload]
    emits: tuple[type[Payload], ...]
    handler: str  # the class in pipeline_workers/handlers (the domain does not import the roles)
    role: str  # the NATS user (roles.Role value) a process running only this stage connects as
    alone: bool  # runs in a process (and connection) of its own: its rights are never shared
    doc: str


STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        RunRequested,
        (RunIngesting, RunIngested, ReplayRequested, RunFailed),
        "IngestHandler",
        "ingest",
        False,
        "Fetches the ground truth (the repository's changes) and asks for one replay per change.",
    ),
    Stage(
        "invoke",
        ReplayRequested,
        (ReplayInvoked, ReplayFailed, JudgeStarted, JudgeCalled),
        "InvokeHandler",
        "invoke",
        False,
        "Has the judge write a follow-up question, then asks the oracle about the change.",
    ),
    Stage(
        "score",
        ReplayInvoked,
        (ReplayScored, ReplayFailed, JudgeStarted, JudgeCalled),
        "ScoreHandler",
        "score",
        False,
        "The judge grades the oracle's reply against the diff.",
    ),
    Stage(
        "certify",
        RunCertifying,
        (CertificateIssued, RunCompleted, RunFailed, MethodologyRegistered),
        "CertifyHandler",
        "certify",
        True,
        "Folds the run's scores into its one signed certificate (registers its methodology at start).",
    ),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
# The topic the watchdog publishes: it runs in every worker process, so every stage's user may publish it.
WATCHDOG_EMITS: tuple[type[Payload], ...] = (RunFailed,)


@dataclass(frozen=True, slots=True)
class Producer:
    name: str
    emits: tuple[type[Payload], ...]
    role: str | None  # None: no user of its own (it runs inside every worker process)
    doc: str


PRODUCERS: tuple[Producer, ...] = (
    Producer(
        "api",
        (RunRequested, RatingSubmitted, MethodologyRegistered),
        "api",
        "Requests runs, takes ratings, registers methodology versions (admins).",
    ),
    Producer(
        "writer",
        (RunCertifying,),
        "coordinator",
        "The single writer: logs every event, and announces a run whose replays are all done.",
    ),
    Producer("watchdog", WATCHDOG_EMITS, None, "Fails a run that made no progress in time."),
)


def consumer_of(topic: str) -> Stage | None:
    """The stage whose durable consumer reads `topic` (None: only the writer and readers read it)."""
    return next((s for s in STAGES if topic == s.consumes.TOPIC), None)
