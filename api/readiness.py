"""What `/readyz` checks. Ready means the API serves what the log says, now:

- `nats`, `postgres`, `redis`: reachable (Postgres on a connection of its own, never the API's pool, which
  requests blocked on a lock may hold);
- `stream`, `consumers`: the JetStream stream and every durable consumer the service relies on (each
  partition's writer, the stages in `ready_stages`) exist;
- `writer`: no partition's writer has left an event unlogged for longer than `ready_max_behind_s` (the age
  of the oldest event its consumer has not acked: it acks only once the event is appended and projected),
  nor more than `ready_max_lag` events;
- `read_models`: no rebuild marked, and every partition's checkpoint present, of this build's generation and
  naming the namespace readers use (a missing checkpoint is a rebuild pending).

Every probe runs at once under one deadline (`ready_timeout_s`): a probe that does not answer in time is a
failing check that says so. Each failing check names what is wrong; any makes the API not ready."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from echelon_platform.adapters.bus import ConsumerBacklog
from echelon_platform.adapters.readmodel_store import DEFAULT_NAMESPACE, Freshness, text
from echelon_platform.adapters.readmodel_writer import Checkpoint
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.bus_access import stage_durable
from echelon_platform.domain.projections import READ_MODEL_GENERATION
from echelon_platform.errors import EchelonError

OK = "ok"
# A cancelled probe gets this long to unwind (e.g. a connection being closed) after the deadline.
UNWIND_S = 0.05


@dataclass(slots=True)
class Report:
    checks: dict[str, str] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)

    def fail(self, name: str, why: str) -> None:
        self.checks[name] = why
        self.failing.add(name)

    def ok(self, name: str) -> None:
        self.checks[name] = OK
        self.failing.discard(name)

    @property
    def ready(self) -> bool:
        return not self.failing


def required_consumers(settings: Settings) -> list[str]:
    """The durable consumers the service cannot work without: each partition's writer, then the stages."""
    writers = [settings.writer_durable(k) for k in settings.partitioning.indices]
    return [*writers, *(stage_durable(settings.consumer_prefix, stage) for stage in settings.ready_stages)]


Probe = Callable[[Services, Settings, Report], Coroutine[Any, Any, None]]


async def check(services: Services, settings: Settings) -> Report:
    """Every probe at once, all within `ready_timeout_s` (less a moment to unwind those that time out)."""
    report = Report()
    deadline = max(settings.ready_timeout_s - UNWIND_S, UNWIND_S)
    probes: dict[tuple[str, ...], Probe] = {
        ("nats", "stream", "consumers", "writer"): _bus,
        ("postgres",): _postgres,
        ("redis", "read_models"): _read_models,
    }
    tasks = {names: asyncio.create_task(probe(services, settings, report)) for names, probe in probes.items()}
    await asyncio.wait(tasks.values(), timeout=deadline)
    late = [task for task in tasks.values() if not task.done()]
    for names, task in tasks.items():
        if task in late:
            task.cancel()
            for name in names:
                if name not in report.checks:
                    report.fail(name, f"timed out: no answer within {deadline:.2f}s")
        elif (exc := task.exception()) is not None:
            for name in names:
                if name not in report.checks:
                    report.fail(name, f"unknown: {exc or type(exc).__name__}")
    if late:
        await asyncio.wait(late, timeout=UNWIND_S)
    return report


async def _postgres(services: Services, settings: Settings, report: Report) -> None:
    try:
        await services.store.probe(settings.ready_timeout_s)
    except EchelonError as exc:
        report.fail("postgres", str(exc))
        return
    report.ok("postgres")


async def _bus(services: Services, settings: Settings, report: Report) -> None:
    bus = services.bus
    try:
        await bus.ping()
    except EchelonError as exc:
        report.fail("nats", f"unreachable: {exc}")
        for name in ("stream", "consumers", "writer"):
            report.checks[name] = "unknown: NATS unreachable"
        return
    report.ok("nats")
    try:
        exists = await bus.stream_exists()
    except EchelonError as exc:
        report.fail("stream", f"unknown: {exc}")
        report.checks["consumers"] = report.checks["writer"] = "unknown: stream unreadable"
        return
    if not exists:
        report.fail("stream", f"stream {bus.stream} is missing")
        report.checks["consumers"] = report.checks["writer"] = "unknown: no stream"
        return
    report.ok("stream")
    names = required_consumers(settings)
    backlogs = await bus.consumer_backlogs(names)
    missing = [n for n, b in zip(names, backlogs, strict=True) if b is None]
    broken = [b for b in backlogs if isinstance(b, EchelonError)]
    if missing:
        report.fail("consumers", f"durable consumers missing: {', '.join(missing)}")
    elif broken:
        report.fail("consumers", f"unknown: {broken[0]}")
    else:
        report.ok("consumers")
    writers = [b for b in backlogs[: settings.partitioning.count] if isinstance(b, ConsumerBacklog)]
    if len(writers) < settings.partitioning.count:
        report.fail("writer", "unknown: a writer's consumer is missing")
        return
    await _writer(services, settings, writers, report)


async def _writer(services: Services, settings: Settings, backlogs: list[ConsumerBacklog], report: Report) -> None:
    """How far the writers are behind: events not acked (logged and projected) yet, summed over the
    partitions, and how long the oldest of them has been waiting (the time the writer is behind by)."""
    lag = 0
    behind = 0.0
    for k, backlog in enumerate(backlogs):
        lag += backlog.pending
        if backlog.pending:
            oldest = await services.bus.first_age_s(services.subjects.partition_filter(k), backlog.ack_floor)
            behind = max(behind, oldest)
    if behind > settings.ready_max_behind_s:
        report.fail(
            "writer",
            f"writer stalled: an event has waited {behind:.1f}s to be logged (> {settings.ready_max_behind_s}s)",
        )
    elif lag > settings.ready_max_lag:
        report.fail("writer", f"writer lag {lag} > {settings.ready_max_lag}")
    else:
        report.ok("writer")


async def _read_models(services: Services, settings: Settings, report: Report) -> None:
    """One pipeline: the readers' namespace, the rebuild marker and every partition's checkpoint."""
    freshness = Freshness.of(settings.redis_prefix, settings.partitioning)
    try:
        namespace, marker, checkpoints = await services.read_models.freshness_state(freshness)
    except EchelonError as exc:
        report.fail("redis", str(exc))
        report.checks["read_models"] = "unknown: Redis unreachable"
        return
    report.ok("redis")
    if marker is not None:
        report.fail("read_models", f"rebuilding {text(marker)}")
        return
    readers_use = text(namespace) if namespace else DEFAULT_NAMESPACE
    for k, raw in zip(settings.partitioning.indices, checkpoints, strict=True):
        checkpoint = Checkpoint.decode(raw)
        where = f" of partition {k}" if settings.partitioning.partitioned else ""
        if checkpoint is None:
            report.fail("read_models", f"no checkpoint{where}: a rebuild from the log is pending")
            return
        if checkpoint.generation != READ_MODEL_GENERATION:
            report.fail(
                "read_models",
                f"checkpoint{where} is of generation {checkpoint.generation}, not {READ_MODEL_GENERATION}: "
                "a rebuild is pending",
            )
            return
        if checkpoint.namespace != readers_use:
            report.fail(
                "read_models", f"checkpoint{where} names namespace {checkpoint.namespace}, readers use {readers_use}"
            )
            return
    report.ok("read_models")
