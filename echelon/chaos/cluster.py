"""The chaos cluster: infrastructure plus one OS process per role, supervised like systemd would.

Every role runs as `python -m echelon.cli <role>` in its own session (so a kill takes its oracle children
with it, as a container's death would), configured only by environment variables. A supervisor task per
process restarts it whenever it exits; an exit nobody asked for is recorded (a role must exit non-zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from ulid import ULID

from echelon.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedRedis, create_database
from echelon.embedded._process import child_preexec, free_port
from echelon_platform.adapters.migrations import migrate
from echelon_platform.config import Settings
from pipeline_workers.pipeline import STAGES

REPO_ROOT = Path(__file__).resolve().parents[2]
RESTART_DELAY_S = 0.2  # a supervisor's restart back-off (systemd's RestartSec is of this order)


@dataclass(frozen=True, slots=True)
class Tuning:
    """Short timeouts so a chaos run ends in minutes; the run timeout stays far above any fault's length."""

    run_timeout_s: float = 90.0
    ack_wait_s: float = 5.0
    lease_ttl_s: float = 2.0
    watchdog_interval_s: float = 2.0
    stage_concurrency: int = 8


@dataclass
class Exit:
    component: str
    code: int | None
    expected: bool
    at: float


@dataclass
class Role:
    """One supervised process: the argv and environment to (re)start it with, and its current process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    expecting_exit: bool = False
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def spawn(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=child_preexec(signal.SIGTERM),  # never outlive the chaos process
            )
        finally:
            log.close()
        self.started_at = time.monotonic()

    def kill(self) -> None:
        """SIGKILL the process group: the role and any oracle children it started."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.expecting_exit = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@dataclass
class Cluster:
    settings: Settings  # what the roles are configured with (URLs, names)
    work_dir: Path
    tuning: Tuning
    nats: EmbeddedNats | None = None
    redis: EmbeddedRedis | None = None
    database_name: str = ""
    roles: dict[str, Role] = field(default_factory=dict)
    exits: list[Exit] = field(default_factory=list)
    _supervisors: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    @property
    def database_url(self) -> str:
        return str(self.settings.database_url)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def coordinators(self) -> list[Role]:
        return [r for n, r in self.roles.items() if n.startswith("coordinator")]

    def env(self) -> dict[str, str]:
        s, t = self.settings, self.tuning
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECHELON_") and k != "ANTHROPIC_API_KEY"}
        env.update(
            {
                "PYTHONPATH": str(REPO_ROOT),
                "NATS_URL": str(s.nats_url),
                "DATABASE_URL": str(s.database_url),
                "REDIS_URL": str(s.redis_url),
                "ECHELON_DATA_DIR": str(self.work_dir / "data"),
                "ECHELON_LOCAL_REPO_ROOTS": f'["{self.work_dir / "data"}"]',
                "ECHELON_STREAM_NAME": s.stream_name,
                "ECHELON_SUBJECT_ROOT": s.subject_root,
                "ECHELON_REDIS_PREFIX": s.redis_prefix,
                "ECHELON_CONSUMER_PREFIX": s.consumer_prefix,
                "ECHELON_PARTITIONS": str(s.partitions),  # every coordinator stands for every partition
                "ECHELON_API_PORT": str(s.api_port),
                "ECHELON_JWT_SECRET": s.jwt_secret.get_secret_value(),
                "ECHELON_RUNS_PER_MINUTE": "1000000",
                "ECHELON_RUN_TIMEOUT_S": str(t.run_timeout_s),
                "ECHELON_ACK_WAIT_S": str(t.ack_wait_s),
                "ECHELON_LEASE_TTL_S": str(t.lease_ttl_s),
                "ECHELON_WATCHDOG_INTERVAL_S": str(t.watchdog_interval_s),
                "ECHELON_STAGE_CONCURRENCY": str(t.stage_concurrency),
                "ECHELON_LOG_LEVEL": "INFO",
            }
        )
        return env

    def add_role(self, name: str, *args: str) -> Role:
        role = Role(
            name=name,
            argv=[sys.executable, "-m", "echelon.cli", *args],
            env=self.env(),
            log_path=self.work_dir / "logs" / f"{name}.log",
        )
        self.roles[name] = role
        return role

    async def start_roles(self) -> None:
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.work_dir / "data").mkdir(parents=True, exist_ok=True)
        self.add_role("api", "api")
        self.add_role("coordinator-a", "coordinator")
        self.add_role("coordinator-b", "coordinator")
        for stage in STAGES:
            self.add_role(f"worker-{stage}", "worker", stage)
        for role in self.roles.values():
            await role.spawn()
            self._supervisors.append(asyncio.create_task(self._supervise(role)))

    async def _supervise(self, role: Role) -> None:
        """Restart the role whenever it exits, as a supervisor would; note exits we did not cause."""
        while not self._stopping:
            assert role.proc is not None
            code = await role.proc.wait()
            if self._stopping:
                return
            self.exits.append(Exit(role.name, code, role.expecting_exit, time.monotonic()))
            role.expecting_exit = False
            await asyncio.sleep(RESTART_DELAY_S)
            if self._stopping:
                return
            role.restarts += 1
            await role.spawn()

    async def stop_roles(self) -> None:
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        procs = [r.proc for r in self.roles.values() if r.proc is not None and r.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()

    async def leader(self) -> tuple[int, str] | None:
        """(epoch, holder) of the writer lease of the log's first partition (the one coordinator faults kill)."""
        conn = await asyncpg.connect(self.database_url)
        try:
            row = await conn.fetchrow(
                "SELECT epoch, holder FROM writer_lease WHERE partition = $1", self.settings.lease_name(0)
            )
        finally:
            await conn.close()
        return None if row is None else (int(row["epoch"]), str(row["holder"]))

    def role_of_holder(self, holder: str) -> Role | None:
        """The coordinator whose OS pid the holder string (host:pid:token) names."""
        parts = holder.split(":")
        pid = int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None
        return next((r for r in self.coordinators() if r.pid is not None and r.pid == pid), None)


@asynccontextmanager
async def cluster(base: Settings, work_dir: Path, tuning: Tuning) -> AsyncIterator[Cluster]:
    """Infrastructure (the configured URLs, else embedded servers under work_dir), a fresh database, stream,
    subject root and key prefix of its own, migrations applied; then every role, stopped on exit."""
    tag = str(ULID()).lower()[-10:]
    nats: EmbeddedNats | None = None
    redis: EmbeddedRedis | None = None
    postgres: EmbeddedPostgres | None = None
    async with contextlib.AsyncExitStack() as stack:
        nats_url, redis_url, admin_url = base.nats_url, base.redis_url, base.database_url
        if not nats_url:
            nats = await stack.enter_async_context(EmbeddedNats(work_dir / "nats", sync_always=True))
            nats_url = nats.url
        if not redis_url:
            redis = await stack.enter_async_context(EmbeddedRedis(work_dir / "redis"))
            redis_url = redis.url
        if not admin_url:
            postgres = await stack.enter_async_context(EmbeddedPostgres(work_dir / "postgres"))
            admin_url = postgres.url
        database_name = f"echelon_chaos_{tag}"
        database_url = await create_database(admin_url, database_name)
        await migrate(database_url)
        settings = base.model_copy(
            update={
                "nats_url": nats_url,
                "redis_url": redis_url,
                "database_url": database_url,
                "stream_name": f"CHAOS{tag.upper()}",
                "subject_root": f"chaos{tag}",
                "redis_prefix": f"chaos{tag}:",
                "consumer_prefix": f"chaos{tag}",
                "api_port": free_port(),
                "lease_ttl_s": tuning.lease_ttl_s,
                # The roles' data directory: the checks read the signing keys' pinned root from it too.
                "data_dir": work_dir / "data",
            }
        )
        if settings.uses_dev_secret:
            settings = settings.model_copy(update={"jwt_secret": type(settings.jwt_secret)(f"chaos-{ULID()}")})
        world = Cluster(settings, work_dir, tuning, nats=nats, redis=redis, database_name=database_name)
        try:
            await world.start_roles()
            yield world
        finally:
            await world.stop_roles()


async def drop_database(admin_url: str, name: str) -> None:
    """Remove a chaos run's database from a server we were given (an embedded one goes with the work dir)."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
