"""All three embedded servers together, plus a helper to give each test run its own database."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from echelon.embedded._nats import EmbeddedNats
from echelon.embedded._postgres import EmbeddedPostgres
from echelon.embedded._process import EmbeddedServer, EmbeddedServerError
from echelon.embedded._redis import EmbeddedRedis
from echelon_platform.domain.bus_access import BusLayout
from echelon_platform.redact import redact_url

_MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: longer names are silently truncated by postgres


@dataclass(frozen=True, slots=True)
class StackUrls:
    """Client URLs; the Postgres and Redis ones carry their passwords (masked in the repr)."""

    nats_url: str
    database_url: str
    redis_url: str

    def __repr__(self) -> str:
        return (
            f"StackUrls(nats_url={redact_url(self.nats_url)!r}, database_url={redact_url(self.database_url)!r},"
            f" redis_url={redact_url(self.redis_url)!r})"
        )


class EmbeddedStack:
    """NATS (JetStream), Postgres and Redis under ``data_dir/{nats,postgres,redis}``, started concurrently.

    Each server follows the :class:`EmbeddedServer` rules (free ports, adoption, clean stop). If any
    server fails to start, the others are stopped before the error propagates.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        nats_sync_always: bool = False,
        nats_auth: BusLayout | None = None,
    ) -> None:
        """`nats_auth`: NATS requires a user per role (see :class:`EmbeddedNats`)."""
        self.data_dir = Path(data_dir).absolute()
        self.nats = EmbeddedNats(
            self.data_dir / "nats",
            sync_always=nats_sync_always,
            auth=nats_auth,
        )
        self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
        self.redis = EmbeddedRedis(self.data_dir / "redis")

    @property
    def servers(self) -> tuple[EmbeddedServer, ...]:
        return (self.nats, self.postgres, self.redis)

    @property
    def urls(self) -> StackUrls:
        return StackUrls(nats_url=self.nats.url, database_url=self.postgres.url, redis_url=self.redis.url)

    async def start(self) -> None:
        try:
            results = await asyncio.gather(*(server.start() for server in self.servers), return_exceptions=True)
        except BaseException:
            await self.stop()  # cancelled: do not leave the ones that did start running
            raise
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            await self.stop()
            for other in errors[1:]:
                errors[0].add_note(f"also failed: {other!r}")
            raise errors[0]

    async def stop(self) -> None:
        """Stop all three concurrently (adopted ones are only detached); re-raise the first failure."""
        results = await asyncio.gather(*(server.stop() for server in self.servers), return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            raise errors[0]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_database(admin_url: str, name: str) -> str:
    """Create database name on the server at admin_url unless it exists; return a URL for it.

    The returned URL is admin_url with its path replaced, so user, host, port and query carry over.
    """
    if not name or len(name.encode()) > _MAX_IDENTIFIER_BYTES or "\x00" in name:
        raise ValueError(f"invalid database name {name!r}")
    try:
        conn = await asyncpg.connect(admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                # Created concurrently by someone else is just as good.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise EmbeddedServerError(f"cannot create database {name!r}: {exc}") from exc
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + quote(name, safe="")))
