"""`echelon stack up`: infrastructure (configured or embedded), migrations, then API + coordinator + stages."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager

import structlog
import uvicorn

from api.app import create_app
from coordinator.factory import coordinators_for
from echelon.embedded import EmbeddedStack
from echelon.endpoint import remove_endpoint, write_endpoint
from echelon.http_server import api_server_config
from echelon_platform.adapters.migrations import migrate
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.roles import Role
from echelon_platform.redact import redact_url
from pipeline_workers.pipeline import Pipeline

NON_CERTIFY_STAGES = ("ingest", "invoke", "score")

log = structlog.get_logger(__name__)


@asynccontextmanager
async def infrastructure(settings: Settings) -> AsyncIterator[Settings]:
    """Yield settings with all three URLs set: as configured, or embedded servers under data_dir."""
    if settings.infra_configured():
        yield settings
        return
    data_dir = settings.data_dir.resolve()
    # Only an embedded NATS we start ourselves gets authentication; a configured one has its own users.
    auth_root = settings.subject_root if settings.nats_auth and not settings.nats_url else None
    async with EmbeddedStack(
        data_dir,
        nats_sync_always=settings.nats_sync_always,
        nats_auth_subject_root=auth_root,
        partitions=settings.partitions,
    ) as stack:
        urls = stack.urls
        credentials: dict[str, object] = {}
        if auth_root is not None and not (settings.nats_role_passwords or settings.nats_credentials_file):
            stack.nats.credentials()  # an adopted server's file is already there; make sure of it
            credentials["nats_credentials_file"] = stack.nats.credentials_path
        log.info(
            "stack.embedded",
            nats=redact_url(urls.nats_url),
            postgres=redact_url(urls.database_url),
            redis=redact_url(urls.redis_url),
            data_dir=str(data_dir),
        )
        yield settings.model_copy(
            update={
                "nats_url": settings.nats_url or urls.nats_url,
                "database_url": settings.database_url or urls.database_url,
                "redis_url": settings.redis_url or urls.redis_url,
                **credentials,
            }
        )


class AnnouncingServer(uvicorn.Server):
    """uvicorn that records the URL it serves in `<data_dir>/api.json` once it accepts connections (the
    port it really bound, even for port 0), for the CLI to find; removed again on a clean shutdown."""

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self._settings = settings
        self._data_dir = settings.data_dir.resolve()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        port = self._settings.api_port
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                port = sock.getsockname()[1]
                break
        url = self._settings.model_copy(update={"api_port": port}).api_url()
        write_endpoint(self._data_dir, url)
        log.info("stack.api", url=url, endpoint_file=str(self._data_dir / "api.json"))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        remove_endpoint(self._data_dir)
        await super().shutdown(sockets)


class _Server(AnnouncingServer):
    """uvicorn without its own signal handling: the stack owns SIGINT/SIGTERM and stops every part."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def freeze_startup_heap() -> None:
    """Everything a role loaded and built before serving lives as long as the process: move it out of the
    cycle collector's reach, so its full passes no longer re-scan it all while every request waits. Measured
    by scripts/bench_post_side.sh: POST c=32 p99 148 ms → 27 ms. Entry points only (never in tests)."""
    gc.collect()
    gc.freeze()


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
        # One connection per role, each logged in as its own NATS user (echelon_platform/domain/roles.py):
        # the server lets only the certify connection publish certificates.
        async with (
            Services(
                resolved,
                name="echelon-coordinator",
                pool_size=max(4, len(resolved.writer_partition_ids) + 2),  # an append in flight per partition
                role=Role.COORDINATOR,
            ) as services,
            Services(
                resolved, name="echelon-stages", metrics=services.metrics, pool_size=4, role=Role.STAGES
            ) as stage_services,
            Services(
                resolved, name="echelon-certify", metrics=services.metrics, pool_size=2, role=Role.CERTIFY
            ) as certify_services,
            # The API's own connections: a publish that failed (503) must never be sent later from a
            # reconnect buffer, which the writer's and stages' connections rightly keep.
            Services(
                resolved,
                name="echelon-api",
                metrics=services.metrics,
                pool_size=2,
                buffer_while_reconnecting=False,
                role=Role.API,
            ) as api_services,
            coordinators_for(services, resolved) as coordinator,
            Pipeline(stage_services, resolved, stages=NON_CERTIFY_STAGES) as pipeline,
            Pipeline(certify_services, resolved, stages=("certify",)) as certifier,
        ):
            freeze_startup_heap()
            tasks: list[asyncio.Task[object]] = []
            if with_coordinator:
                tasks.append(asyncio.create_task(coordinator.run()))
            if stages:
                tasks.append(asyncio.create_task(pipeline.run()))
                tasks.append(asyncio.create_task(certifier.run(watchdog=False)))  # one watchdog is enough
            server: _Server | None = None
            if with_api:
                app = create_app(resolved, api_services)
                config = api_server_config(app, resolved, lifespan="on")
                server = _Server(config, resolved)
                tasks.append(asyncio.create_task(server.serve()))
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            by_signal = stopped in done
            log.info("stack.stopping", reason="signal" if by_signal else "a component exited")
            coordinator.stop()
            pipeline.stop()
            certifier.stop()
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
