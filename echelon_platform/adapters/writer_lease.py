"""One writer per partition of the event log: a Postgres lease with an epoch that fences appends.

Election: a session advisory lock, taken on a DEDICATED connection (never the pool's, whose sessions are
shared). Postgres drops it the moment that session ends, so a killed leader is replaced within one poll.
A leader that is alive but stuck (paused, hung, partitioned) keeps its session: it stops renewing
`writer_lease.renewed_at`, and after `ttl_s` a standby terminates the lock holder's backend.

Safety does not rest on the lock: every append first locks the lease row and compares epochs
(`EpochFence.check`), and a new leader bumps the epoch before its first append. An ex-leader that wakes up
late therefore cannot append; and since every append holds the row lock until it commits, log positions
become visible in commit order (a reader tailing `seq > last` never misses a row).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import asyncpg
import structlog

from echelon_platform.adapters.event_store import TRANSIENT_ERRORS
from echelon_platform.errors import WriterFenced
from echelon_platform.retry import sleep_unless

log = structlog.get_logger(__name__)

_BUMP = """
INSERT INTO writer_lease (partition, epoch, holder, backend_pid, renewed_at)
VALUES ($1, 1, $2, pg_backend_pid(), now())
ON CONFLICT (partition) DO UPDATE
    SET epoch = writer_lease.epoch + 1, holder = EXCLUDED.holder, backend_pid = EXCLUDED.backend_pid,
        renewed_at = now()
RETURNING epoch
"""
_RENEW = "UPDATE writer_lease SET renewed_at = now() WHERE partition = $1 AND epoch = $2"
_ROW = (
    "SELECT backend_pid, holder, epoch, now() - renewed_at > make_interval(secs => $2) AS stale "
    "FROM writer_lease WHERE partition = $1"
)
# A bigint advisory key shows in pg_locks as (classid, objid) = (high, low) 32 bits, objsubid 1.
_LOCK_HOLDER = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid::bigint = $1 AND objid::bigint = $2
"""
# Row lock first (serialises appends, conflicts with the epoch bump). The idle-in-transaction timeout
# makes the server end an append whose process froze mid-transaction, so its row lock cannot hold a
# new leader's epoch bump back for longer than the lease TTL.
_CHECK = (
    "SELECT epoch, set_config('idle_in_transaction_session_timeout', $2, true) "
    "FROM writer_lease WHERE partition = $1 FOR UPDATE"
)


def lock_key(partition: str) -> int:
    """A stable signed 64-bit advisory key for a partition name."""
    digest = hashlib.sha256(f"echelon.writer_lease:{partition}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _halves(key: int) -> tuple[int, int]:
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class EpochFence:
    """Checked first in each append transaction (see EventStore.append_batch)."""

    partition: str
    epoch: int
    idle_timeout_ms: int = 3000

    @property
    def lease(self) -> tuple[str, int]:
        return self.partition, self.epoch

    async def check(self, conn: asyncpg.Connection) -> None:
        row = await conn.fetchrow(_CHECK, self.partition, str(self.idle_timeout_ms))
        current = None if row is None else row["epoch"]
        if current != self.epoch:
            raise WriterFenced(f"writer epoch {self.epoch} of {self.partition!r} is stale (lease epoch {current})")


class WriterLease:
    """`fence = await lease.acquire(stop)` waits as a standby; `lease.lost` is set when leadership ends."""

    def __init__(
        self,
        database_url: str,
        partition: str,
        *,
        ttl_s: float = 3.0,
        renew_s: float | None = None,
        poll_s: float = 0.25,
        holder: str | None = None,
    ) -> None:
        self.database_url = database_url
        self.partition = partition
        self.ttl_s = ttl_s
        self.renew_s = renew_s if renew_s is not None else ttl_s / 3
        self.poll_s = poll_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.key = lock_key(partition)
        self.lost = asyncio.Event()
        self.fence: EpochFence | None = None
        self._conn: asyncpg.Connection | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._foreign_since: float | None = None

    @property
    def backend_pid(self) -> int | None:
        return None if self._conn is None or self._conn.is_closed() else self._conn.get_server_pid()

    async def acquire(self, stop: asyncio.Event | None = None) -> EpochFence | None:
        """Wait until this process is the writer; None when `stop` was set first."""
        await self.release()
        while stop is None or not stop.is_set():
            try:
                fence = await self._try_once()
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                log.warning("writer_lease.acquire_failed", partition=self.partition, error=str(exc) or repr(exc))
                await self._close()
                fence = None
            if fence is not None:
                return fence
            await sleep_unless(stop, self.poll_s)
        return None

    async def _try_once(self) -> EpochFence | None:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self.database_url, server_settings={"application_name": f"echelon-writer:{self.partition}"}
            )
        conn = self._conn
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key):
            await self._evict_if_stale(conn)
            return None
        epoch = int(await conn.fetchval(_BUMP, self.partition, self.holder))
        self.fence = EpochFence(self.partition, epoch, idle_timeout_ms=int(self.ttl_s * 1000))
        self.lost = asyncio.Event()
        self._foreign_since = None
        self._renewer = asyncio.create_task(self._renew(conn, epoch))
        log.info("writer_lease.acquired", partition=self.partition, epoch=epoch, holder=self.holder)
        return self.fence

    async def _evict_if_stale(self, conn: asyncpg.Connection) -> None:
        """The lock is taken: if its holder stopped renewing, end its session (which frees the lock)."""
        row = await conn.fetchrow(_ROW, self.partition, self.ttl_s)
        high, low = _halves(self.key)
        pid = await conn.fetchval(_LOCK_HOLDER, high, low)
        if pid is None:
            return  # released meanwhile: the next poll takes it
        now = time.monotonic()
        if row is None or row["backend_pid"] != pid:
            # A fresh leader between its lock and its epoch bump (milliseconds). Only if that lasts
            # longer than a lease is it hung, and treated like a stale holder.
            self._foreign_since = self._foreign_since or now
            if now - self._foreign_since < self.ttl_s:
                return
        elif not row["stale"]:
            self._foreign_since = None
            return
        log.warning(
            "writer_lease.evicting",
            partition=self.partition,
            backend_pid=pid,
            holder=row["holder"] if row else None,
            epoch=row["epoch"] if row else None,
        )
        await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        self._foreign_since = None

    async def _renew(self, conn: asyncpg.Connection, epoch: int) -> None:
        last_ok = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self.renew_s)
                try:
                    status = await conn.execute(_RENEW, self.partition, epoch, timeout=self.renew_s)
                except TimeoutError:
                    # The row is busy (a long append); give up only before others would evict us.
                    if time.monotonic() - last_ok + self.renew_s >= self.ttl_s:
                        raise
                    continue
                if status != "UPDATE 1":
                    log.warning("writer_lease.superseded", partition=self.partition, epoch=epoch)
                    break
                last_ok = time.monotonic()
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("writer_lease.renew_failed", partition=self.partition, epoch=epoch, error=repr(exc))
        self.lost.set()

    async def release(self) -> None:
        """Stop renewing and give the lock up (closing the session releases it even if unlock fails)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self.fence is not None:
            self.lost.set()
            self.fence = None
            await self._close()

    async def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(*TRANSIENT_ERRORS, asyncpg.PostgresError):
                await self._conn.close(timeout=2)
            self._conn = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()
        await self._close()
