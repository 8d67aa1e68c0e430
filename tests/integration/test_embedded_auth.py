"""The embedded Postgres and Redis let in only clients holding their generated passwords (0600 files)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
import redis.exceptions
import structlog

from echelon.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedStack
from echelon.embedded._postgres import SUPERUSER
from echelon_platform.config import Settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def connects(**kwargs: object) -> bool:
    try:
        conn = await asyncpg.connect(host="127.0.0.1", user=SUPERUSER, database="postgres", timeout=10, **kwargs)
    except asyncpg.InvalidPasswordError:
        return False
    await conn.close()
    return True


async def test_postgres_refuses_connections_without_its_password(tmp_path: Path) -> None:
    async with EmbeddedPostgres(tmp_path / "pg") as server:
        assert mode(server.password_path) == 0o600
        assert len(server.password) >= 32
        assert not await connects(port=server.port)  # used to be trusted as superuser
        assert not await connects(port=server.port, password="guess")
        assert await connects(port=server.port, password=server.password)
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SELECT current_user") == SUPERUSER
        finally:
            await conn.close()
        assert server.password not in server.state_path.read_text()  # server.json is world-readable
        hba = (server.pgdata / "pg_hba.conf").read_text()
        assert "trust" not in hba and "local   all          all                  scram-sha-256" in hba


async def test_a_cluster_made_without_a_password_is_upgraded_on_start(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    async with server:
        conn = await asyncpg.connect(server.url)
        try:
            await conn.execute("CREATE TABLE kept (id int)")
        finally:
            await conn.close()
    # What an earlier version left behind: a trusting pg_hba.conf and no password file.
    old_password = server.password
    server.password_path.unlink()
    (server.pgdata / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    async with EmbeddedPostgres(tmp_path / "pg") as again:
        assert mode(again.password_path) == 0o600 and again.password != old_password
        assert not await connects(port=again.port)
        assert not await connects(port=again.port, password=old_password)
        conn = await asyncpg.connect(again.url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM kept") == 0  # same cluster, data kept
        finally:
            await conn.close()
    assert old_password not in again.log_path.read_text()


async def test_redis_refuses_clients_without_its_password(tmp_path: Path) -> None:
    async with EmbeddedRedis(tmp_path / "redis") as server:
        assert mode(server.password_path) == 0o600 and mode(server.config_path) == 0o600
        anonymous = aioredis.Redis(host="127.0.0.1", port=server.port)
        wrong = aioredis.Redis(host="127.0.0.1", port=server.port, password="guess")
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):
                await anonymous.set("k", "forged")
            with pytest.raises(redis.exceptions.AuthenticationError):
                await wrong.get("k")
        finally:
            await anonymous.aclose()
            await wrong.aclose()
        client = aioredis.from_url(server.url)
        try:
            assert await client.set("k", "v") and await client.get("k") == b"v"
        finally:
            await client.aclose()
        # Not on the command line, which every local user can read.
        cmdline = await asyncio.to_thread(Path(f"/proc/{server.pid}/cmdline").read_bytes)
        assert server.password.encode() not in cmdline
        assert server.password not in server.state_path.read_text()
        password = server.password
        await server.restart()
        assert server.password == password  # kept across restarts


async def test_stack_urls_carry_passwords_that_reprs_and_logs_mask(tmp_path: Path) -> None:
    async with EmbeddedStack(tmp_path / "stack") as stack:
        urls = stack.urls
        secrets = (stack.postgres.password, stack.redis.password)
        assert all(secret in url for secret, url in zip(secrets, (urls.database_url, urls.redis_url), strict=True))
        settings = Settings(database_url=urls.database_url, redis_url=urls.redis_url, data_dir=tmp_path)
        for shown in (repr(urls), repr(settings), str(settings)):
            assert not any(secret in shown for secret in secrets), shown
            assert "postgres:***@127.0.0.1" in shown
        from echelon.stack import infrastructure

        with structlog.testing.capture_logs() as logs:
            async with infrastructure(Settings(data_dir=tmp_path / "stack", nats_auth=False)) as resolved:
                assert resolved.database_url == urls.database_url
        line = next(entry for entry in logs if entry["event"] == "stack.embedded")
        assert not any(secret in str(line) for secret in secrets) and ":***@" in line["postgres"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs postgres as another user")
async def test_password_files_stay_with_us_not_the_postgres_user(tmp_path: Path) -> None:
    async with EmbeddedPostgres(tmp_path / "pg") as server:
        assert server.password_path.stat().st_uid == os.geteuid()
        assert not list(server.data_dir.glob(".initdb-pw.*"))  # initdb's copy is gone
