"""Apply `db/migrations/*.sql` in order, each in a transaction, recorded with its checksum."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from echelon_platform.errors import MigrationError, StoreError


def _default_dir() -> Path:
    # A source checkout (editable install) keeps them beside the packages; an installed copy runs from
    # a directory that has `db/migrations` (the Docker image's WORKDIR).
    beside = Path(__file__).resolve().parents[2] / "db" / "migrations"
    return beside if beside.is_dir() else Path.cwd() / "db" / "migrations"


DEFAULT_DIR = _default_dir()

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
# One migrator at a time, whichever process starts first (every service migrates at start-up).
_LOCK_KEY = 0x0EC4E1


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = DEFAULT_DIR) -> list[Migration]:
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    return [Migration(p.name, p.read_text()) for p in sorted(directory.glob("*.sql"))]


async def migrate(database_url: str, directory: Path = DEFAULT_DIR) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when already up to date)."""
    migrations = discover(directory)
    try:
        conn = await asyncpg.connect(database_url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreError(f"cannot connect to Postgres: {exc}") from exc
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(_LEDGER)
        done = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
        for migration in migrations:
            recorded = done.get(migration.name)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} was edited after it was applied "
                        f"(checksum {recorded[:12]} → {migration.checksum[:12]}); "
                        "add a new migration instead of changing an applied one"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
            applied.append(migration.name)
    finally:
        await conn.close()
    return applied
