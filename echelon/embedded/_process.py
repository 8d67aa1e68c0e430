"""Process plumbing shared by the embedded servers: spawn, readiness polling, stop, adoption.

A server is either *owned* (a child we spawned: own session, parent-death signal, output appended to a
log file in its data dir) or *adopted* (a live process recorded in ``data_dir/server.json`` that still
answers on its port). Readiness is always established by talking to the server, polling with a deadline.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ctypes
import functools
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from echelon_platform.errors import InfrastructureError
from echelon_platform.redact import redact_url

LOCALHOST = "127.0.0.1"
STATE_FILE = "server.json"
_PR_SET_PDEATHSIG = 1
_LOG_TAIL_BYTES = 16_384


class EmbeddedServerError(InfrastructureError):
    """An embedded server could not be found, started, reached or stopped."""


def free_port(host: str = LOCALHOST) -> int:
    """A port that was free a moment ago (the kernel picks it; a race with other binders is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """Whether nothing listens on host:port (TIME_WAIT leftovers of a stopped server do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same flag the servers set, so a just-stopped server's TIME_WAIT sockets do not block the check.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def process_start_ticks(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process: with the pid, an identity."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no procfs (not Linux), or the process vanished mid-read: ask the kernel directly
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0  # alive; without procfs a constant stands in for the start time
    # The command name (field 2) may contain spaces and parentheses; fields after the last ")" are fixed.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of proc_pid_stat(5)


def pid_alive(pid: int) -> bool:
    """Whether pid is a running process (zombies count as dead: they only wait to be reaped)."""
    return process_start_ticks(pid) is not None


def read_log_tail(path: Path, offset: int = 0, max_lines: int = 40) -> str:
    """The last lines written to path since offset, for error messages."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(offset, size - _LOG_TAIL_BYTES))
            data = log.read()
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    lines = data.decode(errors="replace").splitlines()[-max_lines:]
    return "\n".join(lines) if lines else "(log is empty)"


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@functools.cache
def _libc() -> ctypes.CDLL:
    # Loaded in the parent: dlopen between fork and exec is not async-signal-safe.
    return ctypes.CDLL(None, use_errno=True)


def child_preexec(death_signal: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child death_signal when this process dies (Linux only).

    Popen applies ``user``/``group`` *before* preexec_fn, as needed: the kernel clears the parent-death
    signal on credential changes. The "parent" is the spawning *thread*: spawn from the loop thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = _libc().prctl
    parent = os.getpid()
    args = (ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(death_signal), *[ctypes.c_ulong(0)] * 3)

    def setup() -> None:
        prctl(*args)
        # If the parent died between fork and prctl, no signal will ever come: give up now.
        if os.getppid() != parent:
            os._exit(1)

    return setup


async def poll_until(check: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    """Await check() until it returns True (-> True) or the seconds pass (-> False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    delay = 0.01
    while True:
        if await check():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(min(delay, max(deadline - loop.time(), 0.0)))
        delay = min(delay * 2, 0.2)


@dataclass(frozen=True)
class _State:
    pid: int
    start_ticks: int
    port: int
    url: str


class EmbeddedServer(abc.ABC):
    """Base of the embedded servers: one server process per data dir, reachable on 127.0.0.1.

    * ``start()`` first looks at ``data_dir/server.json``. If the process recorded there is still alive
      (same pid *and* start time) and answers on its port, it is **adopted**: ``url``/``port`` point at
      it and nothing is spawned. Otherwise a new server is spawned (on ``port``, or a free port) and
      ``server.json`` is written once it answers.
    * ``stop()`` stops an owned server (the server's clean-shutdown signal, then SIGKILL after
      ``stop_timeout``) and removes ``server.json``. On an adopted server it only detaches, leaving the
      server running for whoever started it, unless ``stop(force=True)``.
    * ``restart()`` always stops (forcing, if adopted) and starts an owned server on the same port and
      data dir; data on disk is preserved.
    * Owned servers die with this process (parent-death signal) and run in their own session, so a
      terminal's Ctrl-C reaches only us and we stop them in order.
    """

    kind: ClassVar[str]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        startup_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        # abspath also folds "..", as postgres does with its data directory (compared in its probe).
        self.data_dir = Path(os.path.abspath(data_dir))
        self.log_path = self.data_dir / f"{self.kind}.log"
        self.state_path = self.data_dir / STATE_FILE
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._port = port
        self._proc: asyncio.subprocess.Process | None = None
        self._adopted: _State | None = None
        self._lock = asyncio.Lock()

    @abc.abstractmethod
    def _url_for(self, port: int) -> str:
        """The client URL of this server on port."""

    @abc.abstractmethod
    async def _prepare(self, port: int) -> list[str]:
        """Make the data dir ready (config, initdb) and return the server's argv."""

    @abc.abstractmethod
    async def _probe(self, port: int, pid: int) -> None:
        """Talk to the server once; raise unless it is ready *and* ours (pid or data dir): whatever
        else listens on the port must never pass for our server."""

    def _spawn_options(self) -> dict[str, Any]:
        """Extra keyword arguments for the subprocess (user, group, env)."""
        return {}

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServerError(f"embedded {self.kind} has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        return self._url_for(self.port)

    @property
    def pid(self) -> int | None:
        """Pid of the server process (owned or adopted), None when not started."""
        if self._adopted is not None:
            return self._adopted.pid
        return self._proc.pid if self._proc is not None else None

    @property
    def adopted(self) -> bool:
        return self._adopted is not None

    @property
    def running(self) -> bool:
        if self._adopted is not None:
            return process_start_ticks(self._adopted.pid) == self._adopted.start_ticks
        # returncode lags until the event loop reaps the child: ask the kernel too.
        return self._proc is not None and self._proc.returncode is None and pid_alive(self._proc.pid)

    async def start(self) -> None:
        """Start (or adopt) the server and return once it answers; no-op if already running."""
        async with self._lock:
            await self._start()

    async def stop(self, *, force: bool = False) -> None:
        """Stop an owned server; detach from an adopted one unless force (see the class docstring)."""
        async with self._lock:
            await self._stop(force=force)

    async def restart(self) -> None:
        """Stop and start again on the same port and data dir (data preserved)."""
        async with self._lock:
            await self._stop(force=True)
            await self._start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _start(self) -> None:
        if self.running:
            return
        self._adopted = self._proc = None
        await asyncio.to_thread(self.data_dir.mkdir, parents=True, exist_ok=True)
        if await self._try_adopt():
            return
        port = self._port if self._port is not None else free_port()
        if not await asyncio.to_thread(port_is_free, port):
            raise EmbeddedServerError(f"embedded {self.kind}: {LOCALHOST}:{port} is already in use")
        argv = await self._prepare(port)
        self._port = port
        log_offset = await asyncio.to_thread(file_size, self.log_path)
        proc = await self._spawn(argv)
        self._proc = proc
        try:
            await self._wait_ready(proc, port, log_offset)
        except BaseException:
            # Never leave a half-started server behind, whatever interrupted us.
            self._proc = None
            await self._terminate(proc)
            raise
        ticks = process_start_ticks(proc.pid) or 0
        # server.json is readable by everyone: its URL, for people to read, shows no password.
        url = redact_url(self._url_for(port)) or ""
        await asyncio.to_thread(self._write_state, _State(proc.pid, ticks, port, url))

    async def _spawn(self, argv: list[str], *, stdin: bool = False) -> asyncio.subprocess.Process:
        """Run argv with output appended to the log, in its own session, dying with us (stdin: a pipe)."""
        log = await asyncio.to_thread(self.log_path.open, "ab")
        try:
            # Spawned from the loop thread on purpose: the parent-death signal follows the spawning thread.
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=child_preexec(self.stop_signal),
                **self._spawn_options(),
            )
        except OSError as exc:
            raise EmbeddedServerError(f"cannot run embedded {self.kind} ({argv[0]}): {exc}") from exc
        finally:
            log.close()

    async def _wait_ready(self, proc: asyncio.subprocess.Process, port: int, log_offset: int) -> None:
        last_error: Exception | None = None

        async def ready() -> bool:
            nonlocal last_error
            if proc.returncode is not None:
                return True  # stop polling; reported below
            try:
                await self._probe(port, proc.pid)
            except Exception as exc:  # any failure just means "not yet"; the last one is reported
                last_error = exc
                return False
            return True

        if await poll_until(ready, self.startup_timeout) and proc.returncode is None:
            return
        if proc.returncode is not None:
            problem = f"exited with code {proc.returncode} during startup"
        else:
            problem = f"did not answer on port {port} in {self.startup_timeout:g}s (last: {last_error!r})"
        tail = await asyncio.to_thread(read_log_tail, self.log_path, log_offset)
        raise EmbeddedServerError(
            f"embedded {self.kind} in {self.data_dir} {problem}; log {self.log_path} ends with:\n{tail}"
        )

    async def _try_adopt(self) -> bool:
        state = await asyncio.to_thread(self._read_state)
        if state is None:
            return False
        if process_start_ticks(state.pid) != state.start_ticks:
            await asyncio.to_thread(self.state_path.unlink, missing_ok=True)  # stale: server is gone
            return False
        if self._port is not None and self._port != state.port:
            raise EmbeddedServerError(
                f"embedded {self.kind} pid {state.pid} already serves {self.data_dir} on port {state.port},"
                f" not the requested port {self._port}"
            )
        try:
            await self._probe(state.port, state.pid)
        except Exception as exc:
            raise EmbeddedServerError(
                f"embedded {self.kind} pid {state.pid} (from {self.state_path}) is alive but does not "
                f"answer on port {state.port}: {exc!r}; stop that process or remove the state file"
            ) from exc
        self._adopted = state
        self._port = state.port
        return True

    async def _stop(self, *, force: bool) -> None:
        adopted, proc = self._adopted, self._proc
        self._adopted = self._proc = None
        if adopted is not None and force:
            await self._terminate_foreign(adopted)
        elif proc is not None:
            await self._terminate(proc)
        else:
            return  # nothing running, or an adopted server we only detach from
        await asyncio.to_thread(self.state_path.unlink, missing_ok=True)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self.stop_signal)
        try:
            await asyncio.wait_for(proc.wait(), self.stop_timeout)
        except TimeoutError:
            # The leader is still alive, so its process group (own session) is certainly ours to kill.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def _terminate_foreign(self, state: _State) -> None:
        # Not our child, so there is nothing to wait() on: poll its identity until it is gone.
        async def gone() -> bool:
            return process_start_ticks(state.pid) != state.start_ticks

        for sig, seconds in ((self.stop_signal, self.stop_timeout), (signal.SIGKILL, 10.0)):
            if await gone():
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.pid, sig)
            if await poll_until(gone, seconds):
                return
        raise EmbeddedServerError(f"embedded {self.kind} pid {state.pid} survived SIGKILL")

    def _read_state(self) -> _State | None:
        try:
            raw = json.loads(self.state_path.read_text())
            return _State(int(raw["pid"]), int(raw["start_ticks"]), int(raw["port"]), str(raw["url"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, unreadable or from another version: start afresh, it gets rewritten

    def _write_state(self, state: _State) -> None:
        # Write-then-rename so a concurrent reader never sees half a file.
        tmp = self.state_path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
        tmp.replace(self.state_path)
