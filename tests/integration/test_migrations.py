"""Migrations apply in order, once; an edited, already-applied migration is refused."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import asyncpg
import pytest
from ulid import ULID

from echelon.embedded import StackUrls, create_database
from echelon_platform.adapters.migrations import DEFAULT_DIR, migrate
from echelon_platform.errors import MigrationError

REPO_ROOT = Path(__file__).resolve().parents[2]


async def test_migrate_is_idempotent_and_refuses_edits(infra: StackUrls, tmp_path: Path) -> None:
    db = await create_database(infra.database_url, f"mig_{str(ULID()).lower()}")
    migrations = tmp_path / "migrations"
    shutil.copytree(DEFAULT_DIR, migrations)

    first = await migrate(db, migrations)
    assert first == sorted(p.name for p in DEFAULT_DIR.glob("*.sql"))
    assert await migrate(db, migrations) == []

    conn = await asyncpg.connect(db)
    try:
        columns = {
            r["column_name"]
            for r in await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = 'events'")
        }
        indexes = {
            r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'events'")
        }
    finally:
        await conn.close()
    assert {
        "seq",
        "event_id",
        "dedup_key",
        "time",
        "topic",
        "correlation_id",
        "causation_id",
        "payload",
        "version",
        "stream_seq",
    } <= columns
    assert {"events_topic_time_idx", "events_correlation_seq_idx"} <= indexes

    edited = migrations / "0001_events.sql"
    edited.write_text(edited.read_text() + "\n-- a later edit\n")
    with pytest.raises(MigrationError, match=r"0001_events\.sql was edited after it was applied"):
        await migrate(db, migrations)
    admin = await asyncpg.connect(infra.database_url)
    try:
        await admin.execute(f'DROP DATABASE "{db.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_migrate_finds_the_migrations_from_any_working_directory(infra: StackUrls, tmp_path: Path) -> None:
    """`echelon stack up` / `echelon migrate` started outside the checkout still find db/migrations."""
    db = await create_database(infra.database_url, f"mig_{str(ULID()).lower()}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from echelon.cli import main; main(['migrate'])",
        cwd=tmp_path,
        env={**os.environ, "DATABASE_URL": db, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    conn = await asyncpg.connect(db)
    try:
        applied = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
    finally:
        await conn.close()
    assert applied == {p.name for p in DEFAULT_DIR.glob("*.sql")}
