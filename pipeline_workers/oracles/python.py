"""Oracles that are Python callables, gated by an allowlist.

Importing a module runs its code with the worker's privileges, so only targets an operator listed in
``ECHELON_ORACLE_ALLOWLIST`` may be used; the check is pure so the API can run it at request time.

Async callables run in the worker's event loop under ``asyncio.timeout``. Sync callables run in a child
process (``pipeline_workers.oracles.child``), kept warm in a small pool: a thread that hangs can never be
reclaimed, a process is killed at the deadline and replaced, so one user's hanging oracle costs only its
own calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import sys
from collections import Counter
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Any, Self

import orjson

from echelon_platform.domain.oracle_targets import check_callable_allowed, parse_target
from echelon_platform.domain.values import GroundTruthRecord, OracleReply
from echelon_platform.errors import OracleError
from pipeline_workers.oracles.base import build_request, parse_reply
from pipeline_workers.owner import current_owner

_LINE_LIMIT = 64 * 1024 * 1024  # a reply line; diffs in requests are truncated well below this
START_TIMEOUT_S = 20.0  # a Python start-up, even on a loaded machine; a child silent longer is killed
CLOSE_GRACE_S = 2.0  # how long closing the pool waits for processes being started
RESTART_AFTER_S = 1.0  # after a failed start, the next one waits this long (no busy loop of failing starts)
# A call that finds every process busy waits for one to be given back, before it starts another, for this long
# and as long as calls give processes back within this long of each other: a start-up costs ~0.1 s of CPU, far
# more than a fast oracle's call, so a burst of fast calls is served by the processes it has; a slow or hanging
# oracle's calls start new processes after this short wait. A call waits PATIENCE times as long at most, so
# calls arriving faster than the processes serve them still grow the pool.
START_AFTER_S = 0.05
PATIENCE = 10


class _Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> _Child:
        # The child imports oracle modules from the same places this process does.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipeline_workers.oracles.child",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=_LINE_LIMIT,
        )
        child = cls(proc)
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = await proc.stdout.readline()  # the child's first line: it has started
        except BaseException as exc:
            await child.kill()
            if isinstance(exc, TimeoutError):
                raise OSError(f"the oracle process did not start within {START_TIMEOUT_S:g}s") from exc
            raise
        if not ready:
            code = await proc.wait()
            raise OSError(f"the oracle process exited with code {code} as it started")
        return child

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def call(self, target: str, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps({"target": target, "request": request}) + b"\n")
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            code = await self.proc.wait()
            raise OracleError(f"oracle {target} process exited with code {code}")
        reply: dict[str, Any] = orjson.loads(line)
        return reply

    async def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()

    async def close(self) -> None:
        """Ask it to exit (stdin EOF); kill it if it does not."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(2):
                await self.proc.wait()
        except TimeoutError:
            await self.kill()


class OracleProcessPool:
    """Warm child processes for sync oracles: one call per process at a time, up to `max_idle` kept
    between calls, `warm` started ahead of the first call (and kept started).

    At most `max_processes` calls at once, and at most 3/4 of them for one user (the stage's task says
    whose call it is), so a user whose sync oracles hang keeps processes for everyone else. A call with no
    idle process waits for one given back (for `start_after_s`, longer while calls keep giving theirs back
    within `start_after_s` of each other, `PATIENCE` times that at most), then starts one (at most
    `max_starting` start at once: each costs a Python start-up) and takes whichever is free first, the new
    one or one another call gives back: a fast oracle is served by a few warm processes, and a slow or
    hanging one gets new processes as fast as they start. A process that cannot start (no more processes or
    descriptors, a start-up that fails or hangs) fails the calls waiting with OSError, which the stage
    retries later; the next start waits `RESTART_AFTER_S`."""

    def __init__(
        self,
        *,
        max_idle: int = 8,
        max_processes: int = 32,
        warm: int = 0,
        max_starting: int = 2,
        start_after_s: float = START_AFTER_S,
    ) -> None:
        self.max_idle = max_idle
        self.start_after_s = start_after_s
        self.max_processes = max(1, max_processes)
        self.per_owner = max(1, self.max_processes * 3 // 4)
        self.max_starting = max(1, max_starting)
        self._warm = min(warm, self.max_processes)
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._starting: set[asyncio.Task[None]] = set()
        self._waiting = 0  # calls waiting for a process
        self._start_error: OSError | None = None
        self._failed_at = 0.0
        self._given_back_at = float("-inf")  # when a call last gave its process back
        self._owners: Counter[str] = Counter()
        self._changed = asyncio.Condition()
        self._closed = False
        self.spawned = 0

    @property
    def starting(self) -> int:
        """Processes being started now."""
        return len(self._starting)

    @property
    def busy(self) -> int:
        """Processes in a call now."""
        return len(self._busy)

    async def __aenter__(self) -> Self:
        async with self._changed:
            self._keep_warm()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()  # calls waiting for a turn or a process give up at once
        # A process being started gets a moment to finish (then it is closed like the idle ones); a start-up
        # still silent after that is cancelled, which kills its process.
        if self._starting:
            _, late = await asyncio.wait(set(self._starting), timeout=CLOSE_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        idle, self._idle = self._idle, []
        busy, self._busy = list(self._busy), set()
        await asyncio.gather(*(c.close() for c in idle), *(c.kill() for c in busy), return_exceptions=True)

    async def call(self, target: str, request: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """The child's reply, or OracleError on timeout (the child is killed, never reused). Waiting for a
        process counts toward the timeout: a call that cannot get one in time has timed out."""
        owner = current_owner.get() or ""
        try:
            async with asyncio.timeout(timeout_s):
                await self._turn(owner)
                try:
                    child = await self._take()
                except BaseException:
                    await asyncio.shield(self._release(owner, None, keep=False))
                    raise
        except TimeoutError as exc:
            raise OracleError(f"oracle {target} timed out after {timeout_s:g}s waiting for a process") from exc
        ok = False
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                reply = await child.call(target, request)
            ok = True
            return reply
        except TimeoutError as exc:
            if deadline.expired():
                raise OracleError(f"oracle {target} timed out after {timeout_s:g}s") from exc
            raise
        finally:
            # Timed out, cancelled (the worker is stopping) or broken: its state is unknown, it is killed.
            await asyncio.shield(self._release(owner, child, keep=ok and child.alive))

    async def _turn(self, owner: str) -> None:
        async with self._changed:
            await self._changed.wait_for(
                lambda: (
                    self._closed
                    or (sum(self._owners.values()) < self.max_processes and self._owners[owner] < self.per_owner)
                )
            )
            if self._closed:
                raise OSError("the oracle process pool is closed")
            self._owners[owner] += 1

    async def _take(self) -> _Child:
        loop = asyncio.get_running_loop()
        since = loop.time()
        async with self._changed:
            self._waiting += 1
            try:
                while True:
                    if self._closed:
                        raise OSError("the oracle process pool is closed")
                    while self._idle:
                        child = self._idle.pop()
                        if child.alive:
                            self._busy.add(child)
                            return child
                    error = self._start_error
                    if error is not None and not self._starting and not self._busy:
                        # Nothing to wait for: tell the caller now (retried later by the stage).
                        raise OSError(f"cannot start an oracle process: {error}")
                    now = loop.time()
                    may_start = error is None or now - self._failed_at >= RESTART_AFTER_S
                    # See START_AFTER_S. Nothing busy: nothing will come back, start at once.
                    last = max(since, self._given_back_at)
                    patient = (
                        bool(self._busy)
                        and now - last < self.start_after_s
                        and now - since < PATIENCE * self.start_after_s
                    )
                    if may_start and not patient and self._waiting > len(self._starting):
                        self._start_one()
                    # Wake up for a failed start's retry after its pause, or when the wait for a process is over.
                    wake = None
                    if patient:
                        wake = min(last + self.start_after_s, since + PATIENCE * self.start_after_s) - now
                    if error is not None:
                        wake = RESTART_AFTER_S
                    try:
                        async with asyncio.timeout(wake):
                            await self._changed.wait()
                    except TimeoutError:
                        pass
            finally:
                self._waiting -= 1

    def _start_one(self) -> None:
        """Start a process in the background (the caller holds the lock), within the limits."""
        total = len(self._busy) + len(self._idle) + len(self._starting)
        if self._closed or len(self._starting) >= self.max_starting or total >= self.max_processes:
            return
        task = asyncio.get_running_loop().create_task(self._start())
        self._starting.add(task)

    def _keep_warm(self) -> None:
        while len(self._busy) + len(self._idle) + len(self._starting) < self._warm:
            before = len(self._starting)
            self._start_one()
            if len(self._starting) == before:
                return  # at a limit: topped up as starts finish

    async def _start(self) -> None:
        child: _Child | None = None
        error: OSError | None = None
        surplus = False
        try:
            child = await _Child.start()
        except OSError as exc:  # no more processes or descriptors, or a start-up that failed or hung
            error = exc
        except Exception as exc:  # anything else a start may raise is a failed start too
            error = OSError(f"{type(exc).__name__}: {exc}")
        finally:
            async with self._changed:
                self._starting.discard(asyncio.current_task())
                self._start_error = error
                if error is not None:
                    self._failed_at = asyncio.get_running_loop().time()
                if child is not None:
                    self.spawned += 1
                    surplus = self._closed or (self._waiting == 0 and len(self._idle) >= max(self.max_idle, self._warm))
                    if not surplus:
                        self._idle.append(child)
                    self._keep_warm()
                self._changed.notify_all()
        if child is not None and surplus:
            await child.close()

    async def _release(self, owner: str, child: _Child | None, *, keep: bool) -> None:
        async with self._changed:
            if child is not None:
                self._busy.discard(child)
                keep = keep and not self._closed and (self._waiting > 0 or len(self._idle) < self.max_idle)
                if keep:
                    self._idle.append(child)
                    self._given_back_at = asyncio.get_running_loop().time()  # a killed one is not given back
            self._owners[owner] -= 1
            if self._owners[owner] <= 0:
                del self._owners[owner]
            self._changed.notify_all()
        if child is not None and not keep:
            await child.kill()


class PythonOracle:
    def __init__(
        self,
        module: str,
        callable_name: str,
        allowlist: Collection[str],
        *,
        timeout_s: float = 30.0,
        pool: OracleProcessPool | None = None,
    ) -> None:
        self.target = f"{module}:{callable_name}"
        check_callable_allowed(self.target, allowlist)
        self._module = module
        self._name = callable_name
        self._timeout = timeout_s
        self._pool = pool
        self._fn: Callable[..., Any] | None = None

    @classmethod
    def from_target(
        cls, target: str, allowlist: Collection[str], *, timeout_s: float = 30.0, pool: OracleProcessPool | None = None
    ) -> PythonOracle:
        module, name = parse_target(target)
        return cls(module, name, allowlist, timeout_s=timeout_s, pool=pool)

    def _load(self) -> Callable[..., Any]:
        # Imported lazily, on the worker, so the API process never runs oracle code.
        if self._fn is None:
            try:
                module = importlib.import_module(self._module)
            except Exception as exc:
                raise OracleError(f"cannot import oracle module {self._module!r}: {type(exc).__name__}: {exc}") from exc
            fn = getattr(module, self._name, None)
            if not callable(fn):
                raise OracleError(f"{self.target} is not a callable")
            self._fn = fn
        return self._fn

    async def invoke(self, record: GroundTruthRecord, follow_up_question: str) -> OracleReply:
        fn = self._load()
        request = build_request(record, follow_up_question)
        if not _is_async(fn):
            return parse_reply(await self._in_child(request))
        try:
            async with asyncio.timeout(self._timeout) as deadline:
                result = await fn(request)
        except TimeoutError as exc:
            if deadline.expired():  # ours, not a TimeoutError the callable raised itself
                raise OracleError(f"oracle {self.target} timed out after {self._timeout:g}s") from exc
            raise OracleError(f"oracle {self.target} raised TimeoutError: {str(exc)[:300]}") from exc
        except OracleError:
            raise
        except Exception as exc:
            raise OracleError(f"oracle {self.target} raised {type(exc).__name__}: {str(exc)[:300]}") from exc
        return parse_reply(result)

    async def _in_child(self, request: dict[str, Any]) -> object:
        if self._pool is not None:
            reply = await self._pool.call(self.target, request, timeout_s=self._timeout)
        else:
            async with OracleProcessPool(max_idle=0) as pool:  # one-off: a process for this call only
                reply = await pool.call(self.target, request, timeout_s=self._timeout)
        if "error" in reply:
            raise OracleError(str(reply["error"]))
        if "raised" in reply:
            raise OracleError(f"oracle {self.target} raised {reply['raised']}: {reply['message']}")
        return reply["result"]


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
