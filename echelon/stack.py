"""`echelon stack up`: infrastructure (configured or embedded), migrations, then API + coordinator + stages."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager

import structlog
import uvicorn

from api.app import create_app
from coordinator.factory import coordinator_for
from echelon.embedded import EmbeddedStack
from echelon_platform.adapters.migrations import migrate
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from pipeline_workers.pipeline import Pipeline

log = structlog.get_logger(__name__)


@asynccontextmanager
async def infrastructure(settings: Settings) -> AsyncIterator[Settings]:
    """Yield settings with all three URLs set: as configured, or embedded servers under data_dir."""
    if settings.infra_configured():
        yield settings
        return
    data_dir = settings.data_dir.resolve()
    async with EmbeddedStack(data_dir, nats_sync_always=settings.nats_sync_always) as stack:
        urls = stack.urls
        log.info(
            "stack.embedded",
            nats=urls.nats_url,
            postgres=urls.database_url,
            redis=urls.redis_url,
            data_dir=str(data_dir),
        )
        yield settings.model_copy(
            update={
                "nats_url": settings.nats_url or urls.nats_url,
                "database_url": settings.database_url or urls.database_url,
                "redis_url": settings.redis_url or urls.redis_url,
            }
        )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the stack owns SIGINT/SIGTERM and stops every part."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(
    settings: Settings, *, with_api: bool = True, stages: bool = True, with_coordinator: bool = True
) -> int:
    """Run everything in one process until SIGINT/SIGTERM, then stop fetching, finish in-flight work and
    shut the embedded servers down (one process suits our 2-core machines).

    The coordinator waits as a standby until it holds the writer lease, so several processes may run it.
    Returns the exit code: 0 after a signal, 1 when a component ended on its own (a supervisor restarts)."""
    if with_api:
        settings.check_api_exposure()  # before starting anything: one line, exit 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with infrastructure(settings) as resolved:
        applied = await migrate(str(resolved.database_url))
        if applied:
            log.info("stack.migrated", applied=applied)
        async with (
            Services(resolved, name="echelon-stack", pool_size=6) as services,
            # The API's own connections: a publish that failed (503) must never be sent later from a
            # reconnect buffer, which the writer's and stages' connections rightly keep.
            Services(
                resolved, name="echelon-api", metrics=services.metrics, pool_size=2, buffer_while_reconnecting=False
            ) as api_services,
            coordinator_for(services, resolved) as coordinator,
            Pipeline(services, resolved) as pipeline,
        ):
            tasks: list[asyncio.Task[object]] = []
            if with_coordinator:
                tasks.append(asyncio.create_task(coordinator.run()))
            if stages:
                tasks.append(asyncio.create_task(pipeline.run()))
            server: _Server | None = None
            if with_api:
                app = create_app(resolved, api_services)
                config = uvicorn.Config(
                    app, host=resolved.api_host, port=resolved.api_port, log_level="warning", lifespan="on"
                )
                server = _Server(config)
                log.info("stack.api", url=f"http://{resolved.api_host}:{resolved.api_port}")
                tasks.append(asyncio.create_task(server.serve()))
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            by_signal = stopped in done
            log.info("stack.stopping", reason="signal" if by_signal else "a component exited")
            coordinator.stop()
            pipeline.stop()
            if server is not None:
                server.should_exit = True
            results = await asyncio.gather(*tasks, return_exceptions=True)
            stopped.cancel()
            failures = [
                r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
            ]
            for failure in failures:
                log.error("stack.component_failed", error=repr(failure))
    log.info("stack.stopped")
    # A role that dies must tell its supervisor: exit non-zero, never 0.
    return 0 if by_signal and not failures else 1
