"""`echelon stack up`: infrastructure (configured or embedded), migrations, then the API, the coordinator and the
stage workers, each a supervised child process. Also what every role process shares (infrastructure, the API
server). This process imports none of the roles' code: it only starts and watches them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
from collections.abc import AsyncIterator, Generator, Mapping
from contextlib import asynccontextmanager

import structlog
import uvicorn

from echelon.embedded import EmbeddedStack
from echelon.endpoint import remove_endpoint, write_endpoint
from echelon.lifecycle import stop_signals
from echelon.setup import set_up_if_allowed
from echelon.supervisor import RoleSpec, Supervisor
from echelon_platform.adapters.migrations import migrate
from echelon_platform.config import Settings
from echelon_platform.redact import redact_url

# An embedded server gets this long to stop cleanly before it is killed: with the roles' own deadline
# (echelon/supervisor.py), `stack up` stops in order within about 9 s of SIGTERM; if not, it ends anyway at
# STOP_DEADLINE_S (children killed), so a stop never takes longer than 10 s.
SERVER_STOP_S = 3.0
STOP_DEADLINE_S = 9.5

log = structlog.get_logger(__name__)


@asynccontextmanager
async def infrastructure(settings: Settings) -> AsyncIterator[Settings]:
    """Yield settings with all three URLs set: as configured, or embedded servers under data_dir."""
    if settings.infra_configured():
        yield settings
        return
    data_dir = settings.data_dir.resolve()
    # Only an embedded NATS we start ourselves gets authentication; a configured one has its own users.
    auth = settings.bus_layout() if settings.nats_auth and not settings.nats_url else None
    async with EmbeddedStack(data_dir, nats_sync_always=settings.nats_sync_always, nats_auth=auth) as stack:
        for server in stack.servers:
            server.stop_timeout = SERVER_STOP_S
        urls = stack.urls
        credentials: dict[str, object] = {}
        if auth is not None and not (settings.nats_role_passwords or settings.nats_credentials_file):
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


class RoleServer(AnnouncingServer):
    """uvicorn without its own signal handling, which would re-raise the signal after its shutdown (exit
    143): the role owns SIGINT/SIGTERM (echelon/lifecycle.py), stops the server and exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def freeze_startup_heap() -> None:
    """Everything a role loaded and built before serving lives as long as the process: move it out of the
    cycle collector's reach, so its full passes no longer re-scan it all while every request waits. Measured
    by scripts/bench_post_side.sh: POST c=32 p99 148 ms → 27 ms. Entry points only (never in tests)."""
    gc.collect()
    gc.freeze()


def stack_roles(*, with_api: bool = True, with_stages: bool = True) -> list[RoleSpec]:
    """The role processes `stack up` runs: the API, the coordinator, and every stage (with the watchdog) in
    one worker process, each stage group on its own NATS user (certify apart)."""
    roles = [RoleSpec("coordinator", ("coordinator",))]
    if with_stages:
        roles.append(RoleSpec("worker", ("worker",)))  # every stage
    return [RoleSpec("api", ("api",)), *roles] if with_api else roles


def role_env(resolved: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of `stack up`'s role processes: ours, pointed at the resolved servers (which an
    embedded stack chose at start), its credentials and the data directory and roots `stack up` settled on."""
    env = dict(environ)
    env.update(
        {
            "ECHELON_NATS_URL": str(resolved.nats_url),
            "ECHELON_DATABASE_URL": str(resolved.database_url),
            "ECHELON_REDIS_URL": str(resolved.redis_url),
            "ECHELON_DATA_DIR": str(resolved.data_dir.resolve()),
            "ECHELON_LOCAL_REPO_ROOTS": json.dumps([str(p) for p in resolved.local_repo_roots]),
        }
    )
    if resolved.nats_credentials_file is not None:
        env["ECHELON_NATS_CREDENTIALS_FILE"] = str(resolved.nats_credentials_file)
    return env


async def prepare(resolved: Settings) -> None:
    """What must be in place before any role starts: the database schema, then the stream and the durable
    consumers (created as the only role allowed to create them)."""
    applied = await migrate(str(resolved.database_url))
    if applied:
        log.info("stack.migrated", applied=applied)
    await set_up_if_allowed(resolved)


async def stack_up(settings: Settings, *, with_api: bool = True, with_stages: bool = True) -> int:
    """Run the infrastructure (configured, or embedded servers in this process) and every role as its own
    supervised child process (echelon/supervisor.py) until SIGINT/SIGTERM, then stop the roles (killed at
    a deadline) and the embedded servers: always within 10 s, exit 0."""
    if with_api:
        settings.check_api_exposure()  # before starting anything: one line, exit 1
    with stop_signals(hard_deadline_s=STOP_DEADLINE_S) as stop:
        async with infrastructure(settings) as resolved:
            await prepare(resolved)
            if not stop.is_set():  # a signal while the servers started: stop them without starting roles
                supervisor = Supervisor(
                    stack_roles(with_api=with_api, with_stages=with_stages),
                    role_env(resolved, os.environ),
                    before_restart=lambda: set_up_if_allowed(resolved),
                )
                running = asyncio.create_task(supervisor.run())
                freeze_startup_heap()
                await asyncio.wait([running, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
                log.info("stack.stopping")
                supervisor.stop()
                await running
    log.info("stack.stopped")
    return 0
