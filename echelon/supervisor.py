"""Role processes under a supervisor, as `echelon stack up` runs them.

Each role (`echelon api`, `echelon coordinator`, `echelon worker`) is its own child process: a crash of one,
even one no Python code can catch (a segfault, SIGKILL, the OOM killer), ends only that process. The
supervisor restarts it with the product's backoff (capped; the count resets once the role stayed up for a
healthy period) and logs every crash: the role, its exit code or signal, the delay before the next start.
The embedded servers belong to the supervisor's process, so they keep serving through any role's crash.

A stop is bounded: SIGTERM to every role, and whatever has not exited after `stop_timeout_s` is killed
(its whole process group: oracle children too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from echelon.embedded._process import child_preexec
from echelon_platform.retry import backoff_delay, sleep_unless

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """A role and the `echelon` sub-command (with its arguments) that runs it."""

    name: str
    args: tuple[str, ...]


@dataclass
class _Running:
    spec: RoleSpec
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    crashes: list[int] = field(default_factory=list)  # exit codes (negative: killed by that signal)


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class Supervisor:
    """Keeps every role running until `stop()`: `run()` returns once all of them have been stopped."""

    def __init__(
        self,
        roles: Sequence[RoleSpec],
        env: Mapping[str, str],
        *,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        healthy_after_s: float = 30.0,
        stop_timeout_s: float = 5.5,
        before_restart: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`before_restart` runs before each restart: `stack up` puts back what a role needs and may not
        create itself (the stream and its consumers, after someone deleted them)."""
        self.roles = {spec.name: _Running(spec) for spec in roles}
        self.before_restart = before_restart
        self.env = dict(env)
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.healthy_after_s = healthy_after_s
        self.stop_timeout_s = stop_timeout_s
        self._stopping = asyncio.Event()

    def pid(self, role: str) -> int | None:
        proc = self.roles[role].proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def restarts(self, role: str) -> int:
        return self.roles[role].restarts

    def crashes(self, role: str) -> list[int]:
        """The exit codes of the role's unrequested exits so far (negative: killed by that signal)."""
        return list(self.roles[role].crashes)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        keepers = [asyncio.create_task(self._keep(running)) for running in self.roles.values()]
        try:
            await self._stopping.wait()
        finally:
            self._stopping.set()
            await self._terminate_all()
            await asyncio.gather(*keepers, return_exceptions=True)

    async def _keep(self, running: _Running) -> None:
        """Start the role; whenever it ends without being asked to, log it and start it again after a backoff."""
        attempt = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            pid: int | None = None
            try:
                proc = running.proc = await self._spawn(running.spec)
            except OSError as exc:  # no process to start (out of pids or memory): try again later
                code, exit_text = -1, f"could not start: {exc}"
            else:
                pid = proc.pid
                log.info("stack.role_started", role=running.spec.name, pid=proc.pid, restarts=running.restarts)
                if self._stopping.is_set():  # the stop came while it was being started: it missed the SIGTERM
                    await self._terminate(running)
                    return
                code = await proc.wait()
                exit_text = describe_exit(code)
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= self.healthy_after_s:
                attempt = 0  # it ran well for a while: this crash starts a new series
            attempt += 1
            delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s)
            running.crashes.append(code)
            log.error(
                "stack.role_crashed",
                role=running.spec.name,
                pid=pid,
                exit=exit_text,
                exit_code=code,
                restart_in_s=round(delay, 2),
                crashes_in_a_row=attempt,
            )
            await sleep_unless(self._stopping, delay)
            if not self._stopping.is_set():
                running.restarts += 1
                await self._prepare_restart(running.spec.name)

    async def _prepare_restart(self, role: str) -> None:
        if self.before_restart is None:
            return
        try:
            await self.before_restart()
        except Exception as exc:  # the role starts anyway: if what it needs is still missing, it says so
            log.warning("stack.restart_preparation_failed", role=role, error=str(exc) or type(exc).__name__)

    async def _spawn(self, spec: RoleSpec) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "echelon.cli",
            *spec.args,
            env=self.env,
            stdin=subprocess.DEVNULL,
            # Own session: a terminal's Ctrl-C reaches the supervisor only, which stops the roles in order,
            # and a forced stop can kill a role's whole group (its oracle processes too).
            start_new_session=True,
            preexec_fn=child_preexec(signal.SIGTERM),  # never outlive the supervisor
        )

    async def _terminate_all(self) -> None:
        await asyncio.gather(*(self._terminate(running) for running in self.roles.values()))

    async def _terminate(self, running: _Running) -> None:
        """SIGTERM the role and wait for it; kill its process group if it is still there at the deadline."""
        proc = running.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), self.stop_timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            log.warning("stack.role_killed", role=running.spec.name, pid=proc.pid, after_s=self.stop_timeout_s)
            return
        if code != 0:
            log.warning("stack.role_stopped", role=running.spec.name, pid=proc.pid, exit=describe_exit(code))
