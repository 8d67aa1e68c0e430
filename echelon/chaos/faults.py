"""The faults: SIGKILL one component (restarted as a supervisor would), cut every Postgres connection, hold a
lock on the event log, or freeze a process with SIGSTOP; then measure how long until it is healthy again.

Timed faults (a server's outage, a table lock, a frozen process) last a duration drawn from the configured
range, so outages of seconds, which a user meets when a server restarts slowly, are exercised too."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from echelon.chaos import probes
from echelon.chaos.cluster import RESTART_DELAY_S, Cluster
from echelon.embedded import EmbeddedServer, pid_alive
from echelon.embedded._process import poll_until
from pipeline_workers.pipeline import STAGES

KINDS = ("coordinator", "worker", "api", "nats", "redis", "postgres", "lock", "stop")
RECOVERY_DEADLINE_S = 60.0


@dataclass
class Fault:
    kind: str
    target: str
    at_s: float  # since the chaos run started
    recovery_s: float | None = None  # None: not healthy again within the deadline
    takeover_s: float | None = None  # coordinator leader killed / connections cut: a new writer epoch
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "target": self.target, "at_s": round(self.at_s, 3)}
        data["recovery_s"] = None if self.recovery_s is None else round(self.recovery_s, 3)
        if self.takeover_s is not None:
            data["takeover_s"] = round(self.takeover_s, 3)
        return data | self.detail


def available_kinds(world: Cluster) -> tuple[str, ...]:
    """Servers we did not start (given URLs) are not ours to kill."""
    return tuple(k for k in KINDS if (k != "nats" or world.nats) and (k != "redis" or world.redis))


async def _dead(pid: int) -> bool:
    return not pid_alive(pid)


class Injector:
    def __init__(
        self,
        world: Cluster,
        http: httpx.AsyncClient,
        rng: random.Random,
        started: float,
        outage_s: tuple[float, float] = (RESTART_DELAY_S, RESTART_DELAY_S),
    ) -> None:
        self.world = world
        self.http = http
        self.rng = rng
        self.started = started
        self.outage_s = outage_s

    def _duration(self) -> float:
        """How long a timed fault lasts: uniform over the configured range."""
        low, high = self.outage_s
        return round(self.rng.uniform(low, high), 3)

    async def inject(self, kind: str) -> Fault:
        handler = getattr(self, f"_{kind}")
        fault: Fault = await handler()
        return fault

    def _fault(self, kind: str, target: str) -> Fault:
        return Fault(kind=kind, target=target, at_s=time.monotonic() - self.started)

    async def _coordinator(self) -> Fault:
        lease = await self.world.leader()
        leader = self.world.role_of_holder(lease[1]) if lease else None
        if lease is None or leader is None:
            # No leader right now (an election under way): kill one coordinator at random instead.
            leader = self.rng.choice(self.world.coordinators())
        fault = self._fault("coordinator", leader.name)
        epoch = lease[0] if lease else 0
        killed = time.monotonic()
        leader.kill()
        fault.takeover_s = await probes.until(probes.writer_elected(self.world, epoch), RECOVERY_DEADLINE_S)
        standby = await probes.until(probes.standbys_ready(self.world), RECOVERY_DEADLINE_S)
        fault.recovery_s = None if standby is None else time.monotonic() - killed
        fault.detail["epoch_before"] = epoch
        return fault

    async def _worker(self) -> Fault:
        stage = self.rng.choice(STAGES)
        fault = self._fault("worker", f"worker-{stage}")
        killed = time.monotonic()
        self.world.roles[f"worker-{stage}"].kill()
        fault.recovery_s = await probes.until(probes.stage_consuming(self.world, stage, killed), RECOVERY_DEADLINE_S)
        return fault

    async def _api(self) -> Fault:
        fault = self._fault("api", "api")
        role = self.world.roles["api"]
        old = role.pid
        role.kill()
        started = time.monotonic()

        async def restarted() -> bool:
            return role.pid not in (None, old) and await probes.api_healthy(self.world, self.http)()

        fault.recovery_s = await probes.until(restarted, RECOVERY_DEADLINE_S)
        if fault.recovery_s is not None:
            fault.recovery_s = time.monotonic() - started
        return fault

    async def _server(self, kind: str, server: EmbeddedServer | None, probe: probes.Probe) -> Fault:
        assert server is not None and server.pid is not None
        fault = self._fault(kind, kind)
        pid = server.pid
        outage = max(RESTART_DELAY_S, self._duration())
        fault.detail["outage_s"] = outage
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await poll_until(lambda: _dead(pid), 10.0)
        await asyncio.sleep(max(0.0, outage - (time.monotonic() - killed)))
        await server.start()  # same port and data dir: the stale state file is noticed and replaced
        healthy = await probes.until(probe, RECOVERY_DEADLINE_S)
        fault.recovery_s = None if healthy is None else time.monotonic() - killed
        return fault

    async def _nats(self) -> Fault:
        return await self._server("nats", self.world.nats, probes.nats_answers(self.world))

    async def _redis(self) -> Fault:
        return await self._server("redis", self.world.redis, probes.redis_answers(self.world))

    async def _postgres(self) -> Fault:
        """pg_terminate_backend of every other session of the database: pools, the writer's lease connection."""
        fault = self._fault("postgres", "connections")
        lease = await self.world.leader()
        epoch = lease[0] if lease else 0
        conn = await asyncpg.connect(self.world.database_url)
        try:
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            with contextlib.suppress(OSError, asyncpg.InterfaceError):
                await conn.close()
        cut = time.monotonic()
        fault.detail["terminated"] = sum(1 for r in rows if r["ok"])
        fault.takeover_s = await probes.until(probes.writer_elected(self.world, epoch), RECOVERY_DEADLINE_S)
        ready = await probes.until(probes.standbys_ready(self.world), RECOVERY_DEADLINE_S)
        fault.recovery_s = None if ready is None else time.monotonic() - cut
        return fault

    async def _lock(self) -> Fault:
        """`LOCK TABLE events` in another session: the writer's appends (and log queries) wait behind it."""
        fault = self._fault("lock", "events")
        held = self._duration()
        fault.detail["held_s"] = held
        conn = await asyncpg.connect(self.world.database_url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                await asyncio.sleep(held)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # An overlapping `postgres` fault cut this session too: the lock ended early.
            fault.detail["lock_cut"] = type(exc).__name__
        finally:
            with contextlib.suppress(OSError, asyncpg.InterfaceError):
                await conn.close()
        released = time.monotonic()
        # Healthy again: a live coordinator of ours holds the lease and every coordinator its lease connection.
        live = await probes.until(probes.writer_elected(self.world, -1), RECOVERY_DEADLINE_S)
        ready = None if live is None else await probes.until(probes.standbys_ready(self.world), RECOVERY_DEADLINE_S)
        fault.recovery_s = None if ready is None else time.monotonic() - released
        return fault

    async def _stop(self) -> Fault:
        """SIGSTOP a process (the writer, half of the time) and SIGCONT it later: a paused former writer must
        never append once another took over, and a paused worker's work is redelivered."""
        lease = await self.world.leader()
        leader = self.world.role_of_holder(lease[1]) if lease else None
        others = [r for n, r in self.world.roles.items() if not n.startswith("coordinator")]
        role = leader if leader is not None and self.rng.random() < 0.5 else self.rng.choice(others)
        fault = self._fault("stop", role.name)
        held = self._duration()
        fault.detail["held_s"] = held
        epoch = lease[0] if lease else 0
        pgid = role.pid
        if pgid is None:  # between a death and its restart: nothing to freeze this round
            fault.recovery_s = 0.0
            return fault
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGSTOP)
        await asyncio.sleep(held)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGCONT)
        resumed = time.monotonic()
        probe: probes.Probe
        if role.name.startswith("coordinator"):
            probe = probes.writer_elected(self.world, epoch - 1)
        elif role.name == "api":
            probe = probes.api_healthy(self.world, self.http)
        else:
            probe = probes.stage_consuming(self.world, role.name.removeprefix("worker-"), resumed)
        healthy = await probes.until(probe, RECOVERY_DEADLINE_S)
        if healthy is not None and role.name.startswith("coordinator"):
            healthy = await probes.until(probes.standbys_ready(self.world), RECOVERY_DEADLINE_S)
        fault.recovery_s = None if healthy is None else time.monotonic() - resumed
        return fault
