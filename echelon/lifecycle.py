"""How a role process runs and stops: SIGINT/SIGTERM ask for a clean stop (exit 0), a component that ends on
its own is a failure (exit 1, so a supervisor restarts the role), and a stop never waits on a stuck component
for longer than a grace period."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# What a role gives its components to finish their work in hand after a stop; then they are cancelled.
# Below `stack up`'s own deadline for its roles (echelon/supervisor.py), so a role stops itself cleanly.
STOP_GRACE_S = 4.0
_CANCEL_WAIT_S = 1.0


@contextmanager
def stop_signals(*, hard_deadline_s: float | None = None) -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM for as long as the block runs (instead of the default of dying
    with the signal, which a supervisor would report as a crash: 130/143).

    With `hard_deadline_s`, the process ends that long after the first signal whatever it is still doing
    (exit 0, child process groups killed): a last resort under the orderly stop's own deadlines."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if not stop.is_set() and hard_deadline_s is not None:
            loop.call_later(hard_deadline_s, _end_now, hard_deadline_s)
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    try:
        yield stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def run_until_stopped(
    role: str,
    components: Sequence[Awaitable[Any]],
    request_stop: Callable[[], None],
    stop: asyncio.Event,
    *,
    grace_s: float = STOP_GRACE_S,
) -> int:
    """Run `components` until `stop` is set or one of them ends, then `request_stop()` and wait for them up
    to `grace_s` (cancelling what is left). Returns the exit code: 0 after a stop signal with every component
    finished cleanly, 1 otherwise."""
    tasks = [asyncio.ensure_future(c) for c in components]
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
    by_signal = stop.is_set()
    log.info(f"{role}.stopping", reason="signal" if by_signal else "a component exited")
    request_stop()
    _, stuck = await asyncio.wait(tasks, timeout=grace_s)
    if stuck:
        log.warning(f"{role}.cancelling", components=len(stuck), after_s=grace_s)
        for task in stuck:
            task.cancel()
        await asyncio.wait(stuck, timeout=_CANCEL_WAIT_S)
    stopped.cancel()
    failures = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    for failure in failures:
        log.error(f"{role}.component_failed", error=repr(failure))
    return 0 if by_signal and not failures else 1


def _end_now(after_s: float) -> None:
    log.error("stop.deadline", after_s=after_s)
    for pid in _child_pids():
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:  # our roles and servers lead sessions of their own: the whole group
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    os._exit(0)


def _child_pids() -> list[int]:
    """This process's children (Linux); where that is unknown, their parent-death signal stops them."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            pids.extend(int(pid) for pid in (task / "children").read_text().split())
    return pids
