"""Real NATS, Postgres and Redis for every test run.

The configured URLs (ECHELON_TEST_NATS_URL / _DATABASE_URL / _REDIS_URL) when given, else embedded servers
started once per session. Every test gets its own stream, subject root, consumer names, Redis key prefix
and database (copied from a migrated template), so runs never collide.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import nats
import nats.js.errors
import pytest
import redis.asyncio as aioredis
from ulid import ULID

from echelon.embedded import EmbeddedStack, StackUrls
from echelon_platform.adapters.migrations import migrate
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.helpers import wait_for


@pytest.fixture(scope="session", autouse=True)
def _own_user_state(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Stacks started by tests record themselves per user (echelon/endpoint.py): in a directory of this
    session's, inherited by every process a test starts, never the real user's."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("user-state"))


@pytest.fixture(scope="session")
async def infra() -> AsyncIterator[StackUrls]:
    nats_url = os.environ.get("ECHELON_TEST_NATS_URL")
    db_url = os.environ.get("ECHELON_TEST_DATABASE_URL")
    redis_url = os.environ.get("ECHELON_TEST_REDIS_URL")
    if nats_url and db_url and redis_url:
        yield StackUrls(nats_url=nats_url, database_url=db_url, redis_url=redis_url)
        return
    # Not under pytest's base directory: a pytest session started meanwhile on this machine makes
    # /tmp/pytest-of-<user> private again (0700), and the embedded PostgreSQL, which runs as another user,
    # would lose its data directory in the middle of this session.
    with tempfile.TemporaryDirectory(prefix="echelon-test-stack-", ignore_cleanup_errors=True) as directory:
        async with EmbeddedStack(Path(directory)) as stack:
            yield stack.urls


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
async def template_db(infra: StackUrls) -> AsyncIterator[str]:
    """A migrated database that each test copies (CREATE DATABASE ... TEMPLATE is a fast file copy)."""
    name = f"echelon_tmpl_{str(ULID()).lower()}"
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    await migrate(_with_database(infra.database_url, name))
    yield name
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for row in await admin.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", f"{name}_t%"):
            await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def settings(infra: StackUrls, template_db: str, tmp_path: Path) -> AsyncIterator[Settings]:
    tag = str(ULID()).lower()
    db_name = f"{template_db}_t{tag[-10:]}"
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{db_name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    settings = Settings(
        nats_url=infra.nats_url,
        database_url=_with_database(infra.database_url, db_name),
        redis_url=infra.redis_url,
        data_dir=tmp_path,
        stream_name=f"T{tag.upper()}",
        subject_root=f"t{tag}",
        redis_prefix=f"t{tag}:",
        consumer_prefix=f"t{tag}",
        fetch_timeout_s=0.2,
        jwt_secret="test-secret-0123456789abcdef0123456789",  # type: ignore[arg-type]
        allow_private_oracles=True,
        watchdog_interval_s=0.2,
        oracle_allowlist=[
            "pipeline_workers.oracles.sample:summarise",
            "pipeline_workers.oracles.sample:broken",
        ],
    )
    yield settings
    await _clean_up(settings, db_name, infra)


async def _clean_up(settings: Settings, db_name: str, infra: StackUrls) -> None:
    """Leave shared servers as we found them: drop this test's stream, keys and database."""
    nc = await nats.connect(infra.nats_url)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(settings.stream_name)
    finally:
        await nc.close()
    redis = aioredis.Redis.from_url(infra.redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}*", count=1000)]
        if keys:
            await redis.unlink(*keys)
    finally:
        await redis.aclose()
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def service_settings(settings: Settings) -> Settings:
    """The settings `services` connects with: a module that needs others overrides this fixture."""
    return settings


@pytest.fixture
async def services(service_settings: Settings) -> AsyncIterator[Services]:
    """NATS, Postgres and Redis connections on this test's stream, database and key prefix."""
    async with Services(service_settings, name="test") as svc:
        yield svc


WaitFor = Callable[..., Awaitable[object]]


@pytest.fixture
def wait() -> WaitFor:
    return wait_for
