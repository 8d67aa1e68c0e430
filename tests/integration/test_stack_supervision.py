"""`echelon stack up` as a user runs it (a real process, embedded servers): a role that crashes (SIGSEGV, as
the deep-JSON segfault did; SIGKILL) is restarted while the API, the other roles and the embedded servers keep
serving, and SIGTERM ends the whole stack within 10 s with exit 0, even with a stuck role or with the NATS
stream and its consumers deleted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import psutil
import pytest

from echelon.supervisor import RoleSpec, Supervisor
from tests.cli import ROOT, cli_env, run_cli
from tests.helpers import wait_for

SECRET = "stack-supervision-test-secret-0123456789"
SERVERS = ("nats", "postgres", "redis")


@dataclass
class Stack:
    proc: asyncio.subprocess.Process
    data_dir: Path
    log_path: Path
    env: dict[str, str]

    def endpoint(self) -> dict[str, object] | None:
        try:
            return dict(json.loads((self.data_dir / "api.json").read_text()))
        except (OSError, ValueError):
            return None

    def role_pid(self, role: str) -> int | None:
        """The pid of the stack's child process running `echelon <role>`."""
        for child in psutil.Process(self.proc.pid).children():
            try:
                argv = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if argv[3:4] == [role]:  # python -m echelon.cli <role> ...
                return int(child.pid)
        return None

    def server_pids(self) -> dict[str, int]:
        return {s: json.loads((self.data_dir / s / "server.json").read_text())["pid"] for s in SERVERS}

    def log(self) -> list[dict[str, object]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
        return lines

    async def stop(self) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the stack took to end."""
        self.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.wait_for(self.proc.wait(), 30)
        return code, time.monotonic() - signalled


@asynccontextmanager
async def stack_up(tmp_path: Path, **env_overrides: str) -> AsyncIterator[Stack]:
    data_dir = tmp_path / "data"
    env = cli_env(ECHELON_DATA_DIR=str(data_dir), ECHELON_API_PORT="0", ECHELON_JWT_SECRET=SECRET, **env_overrides)
    log_path = tmp_path / "stack.log"  # a file: a pipe nobody reads would fill and block the stack
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "echelon.cli", "stack", "up", cwd=ROOT, env=env, stdout=log_file, stderr=log_file
        )
    stack = Stack(proc, data_dir, log_path, env)
    try:
        await wait_for(stack.endpoint, timeout=120, interval=0.1, what="the stack's API")
        yield stack
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for child in psutil.Process().children(recursive=True):  # what a failed test left behind
            if child.pid != proc.pid and str(data_dir) in " ".join(child.cmdline()):
                child.kill()


async def api_answers(stack: Stack) -> bool:
    endpoint = stack.endpoint()
    if endpoint is None:
        return False
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"{endpoint['url']}/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


async def a_run_completes(stack: Stack, tmp_path: Path) -> None:
    args = ("verify", "sample", "--oracle-callable", "pipeline_workers.oracles.sample:summarise", "--limit", "2")
    result = await run_cli(*args, "--watch", cwd=tmp_path, env=stack.env, timeout=120)
    assert result.code == 0, result.stdout + result.stderr + stack.log_path.read_text()[-4000:]
    assert "completed" in result.stdout.splitlines()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def crashes(stack: Stack, role: str) -> list[dict[str, object]]:
    return [e for e in stack.log() if e.get("event") == "stack.role_crashed" and e.get("role") == role]


@pytest.mark.timeout(300)
async def test_a_crashed_role_is_restarted_and_the_rest_keep_serving(tmp_path: Path) -> None:
    async with stack_up(tmp_path) as stack:
        servers = stack.server_pids()
        endpoint = stack.endpoint()
        assert endpoint is not None
        # The API process dies of a segfault: the stack restarts it; nothing else notices.
        os.kill(int(str(endpoint["pid"])), signal.SIGSEGV)
        await wait_for(
            lambda: (e := stack.endpoint()) is not None and e["pid"] != endpoint["pid"],
            timeout=60,
            what="a new API process announcing itself",
        )
        await wait_for(lambda: api_answers(stack), timeout=30, what="the restarted API answering")
        assert stack.proc.returncode is None
        api = stack.endpoint()
        # The worker is SIGKILLed; the same API process goes on answering.
        worker = stack.role_pid("worker")
        assert worker is not None, stack.log_path.read_text()[-4000:]
        os.kill(worker, signal.SIGKILL)
        await wait_for(lambda: api_answers(stack), timeout=10, what="the API answering while the worker restarts")
        await wait_for(lambda: stack.role_pid("worker") not in (None, worker), timeout=30, what="a new worker process")
        assert stack.endpoint() == api
        await a_run_completes(stack, tmp_path)
        # The embedded servers never stopped; each crash was logged with its cause and the restart delay.
        assert stack.server_pids() == servers
        assert all(psutil.pid_exists(pid) for pid in servers.values())
        api_crash = crashes(stack, "api")[0]
        assert api_crash["exit"] == "killed by SIGSEGV" and float(str(api_crash["restart_in_s"])) > 0
        assert crashes(stack, "worker")[0]["exit"] == "killed by SIGKILL"

        # A role that hangs (stopped, it cannot even see SIGTERM) does not hold the stop up.
        coordinator = stack.role_pid("coordinator")
        assert coordinator is not None
        os.kill(coordinator, signal.SIGSTOP)
        code, took = await stack.stop()
        assert code == 0, stack.log_path.read_text()[-4000:]
        assert took < 10, f"stack up took {took:.1f}s to stop"
        await wait_for(
            lambda: not any(alive(pid) for pid in [coordinator, *servers.values()]),
            timeout=5,
            what="the stuck role and the servers gone",
        )


@pytest.mark.timeout(300)
async def test_sigterm_ends_the_stack_within_10s_after_its_stream_was_deleted(tmp_path: Path) -> None:
    # Without NATS users, so this test can delete the stream (with them, only the setup role may).
    async with stack_up(tmp_path, ECHELON_NATS_AUTH="false") as stack:
        await a_run_completes(stack, tmp_path)  # every consumer exists and has worked
        nats_url = json.loads((stack.data_dir / "nats" / "server.json").read_text())["url"]
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            streams = await js.streams_info()
            assert streams
            for info in streams:
                await js.delete_stream(info.config.name)
        finally:
            await nc.close()
        # A run submitted now is refused (503: nothing can store it) or, once a role that lost its consumer
        # was restarted and the supervisor's setup put the stream back, accepted; a busy machine decides
        # which. Either way the stack stops in time.
        args = ("verify", "sample", "--oracle-callable", "pipeline_workers.oracles.sample:summarise")
        answer = await run_cli(*args, cwd=tmp_path, env=stack.env, timeout=60)
        assert ("503" in answer.stdout + answer.stderr) if answer.code != 0 else "submitted" in answer.stdout, answer
        code, took = await stack.stop()
        assert code == 0, stack.log_path.read_text()[-4000:]
        assert took < 10, f"stack up took {took:.1f}s to stop"


async def test_a_role_that_keeps_failing_is_restarted_with_capped_backoff_until_the_stop() -> None:
    # A role command that fails at once (a usage error: exit 2), started again and again.
    prepared: list[int] = []

    async def before_restart() -> None:
        # What `stack up` passes: put back what a role needs (the stream, its consumers) before it starts again.
        prepared.append(len(prepared))
        if len(prepared) == 2:
            raise RuntimeError("setup cannot reach NATS right now")  # logged; the role is restarted anyway

    supervisor = Supervisor(
        [RoleSpec("broken", ("migrate", "--no-such-option"))],
        cli_env(),
        backoff_base_s=0.05,
        backoff_cap_s=0.2,
        before_restart=before_restart,
    )
    running = asyncio.create_task(supervisor.run())
    try:
        await wait_for(lambda: supervisor.restarts("broken") >= 3, timeout=60, what="three restarts")
        assert set(supervisor.crashes("broken")) == {2}
        assert len(prepared) >= 3  # before every restart, even after a failed preparation
    finally:
        supervisor.stop()
        await asyncio.wait_for(running, 10)
    assert supervisor.pid("broken") is None


HUNG = """
import asyncio, subprocess, sys
from echelon.lifecycle import stop_signals

async def main() -> None:
    with stop_signals(hard_deadline_s=0.5) as stop:
        child = subprocess.Popen(["sleep", "300"], start_new_session=True)
        print(child.pid, flush=True)
        await stop.wait()
        await asyncio.sleep(300)  # a stop that never finishes

asyncio.run(main())
"""


async def test_the_hard_deadline_ends_a_hung_stop_with_exit_0_and_kills_the_children() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HUNG, cwd=ROOT, env=cli_env(), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    child = int(await asyncio.wait_for(proc.stdout.readline(), 30))
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    await wait_for(lambda: not alive(child), what="the child killed")
