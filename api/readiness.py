"""What `/readyz` checks: the real NATS connection, Postgres, Redis, the single writer's lag and whether the
read models are being rebuilt. Each check names what is wrong; any failing check makes the API not ready."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
import redis.exceptions

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.errors import EchelonError

OK = "ok"


@dataclass(slots=True)
class Report:
    checks: dict[str, str] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)

    def fail(self, name: str, why: str) -> None:
        self.checks[name] = why
        self.failing.add(name)

    @property
    def ready(self) -> bool:
        return not self.failing


def rebuilding_key(settings: Settings) -> str:
    """Set (to "n/m") by the read-model writer while it rebuilds the read models."""
    return f"{settings.redis_prefix}rebuilding"


async def check(services: Services, settings: Settings) -> Report:
    report = Report()
    names = ("nats", "postgres", "redis")
    pings = await asyncio.gather(
        services.bus.ping(), services.store.ping(), services.read_models.ping(), return_exceptions=True
    )
    for name, result in zip(names, pings, strict=True):
        if result is None:
            report.checks[name] = OK
        else:
            report.fail(name, f"unreachable: {result}")
    if "nats" in report.failing:
        report.checks["writer"] = "unknown: NATS unreachable"
    else:
        await _writer_lag(services, settings, report)
    if "redis" in report.failing:
        report.checks["read_models"] = "unknown: Redis unreachable"
    else:
        await _rebuilding(services, settings, report)
    return report


async def _writer_lag(services: Services, settings: Settings, report: Report) -> None:
    """Stream events the writers have not acknowledged yet (so not yet in Postgres and the read models), summed
    over the log's partitions."""
    bus = services.bus
    lag = 0
    for k in settings.partitioning.indices:
        try:
            info = await bus.js.consumer_info(bus.stream, settings.writer_durable(k), timeout=2)
        except nats.js.errors.NotFoundError:
            report.checks["writer"] = "not started"  # nothing consumed yet; the API itself can accept runs
            return
        except (nats.errors.Error, TimeoutError, EchelonError) as exc:
            report.fail("writer", f"unknown: {exc or type(exc).__name__}")
            return
        lag += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    if lag > settings.ready_max_lag:
        report.fail("writer", f"writer lag {lag} > {settings.ready_max_lag}")
    else:
        report.checks["writer"] = OK


async def _rebuilding(services: Services, settings: Settings, report: Report) -> None:
    try:
        progress = await services.read_models.redis.get(rebuilding_key(settings))
    except (redis.exceptions.RedisError, OSError) as exc:
        report.fail("read_models", f"unknown: {exc}")
        return
    if progress is None:
        report.checks["read_models"] = OK
        return
    text = progress.decode() if isinstance(progress, bytes) else str(progress)
    report.fail("read_models", f"rebuilding {text}")
