"""The Postgres event log: the recorder (append, park: the StateCoordinator's alone), the readers and the
queries of `ports.log`. Its in-memory twin is `adapters.memory.MemoryLog`; tests/integration/test_log_ports.py
holds both to one contract.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import asyncpg
import orjson

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    CertificateIssued,
    JudgeCalled,
    Payload,
    ReplayInvoked,
    ReplayRequested,
    RunFailed,
    RunRequested,
)
from echelon_platform.errors import StoreError, StoreRefused, StoreUnavailable, WriterFenced
from echelon_platform.ports.log import AppendResult, Fence, JudgeTotals, LogEvent, LogRow, ParkedEvent, StalledRun

# The one definition of a transient database failure: the server restarting or refusing connections for a
# while, a connection dropped (or terminated) mid-query, a statement cancelled (statement timeout behind a
# table lock), a deadlock or serialization conflict, exhausted resources. Worth a retry with backoff; the
# adapters translate them into StoreUnavailable (the API answers 503 with Retry-After, the writer retries).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncpg.PostgresConnectionError,  # class 08, e.g. ConnectionDoesNotExistError
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # e.g. a connection terminated by the server mid-query
    asyncpg.OperatorInterventionError,  # class 57: QueryCanceledError, AdminShutdownError, CrashShutdownError
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.TransactionRollbackError,  # class 40: deadlock, serialization failure
    asyncpg.LockNotAvailableError,
)


def append_arguments(events: Sequence[tuple[Envelope, int]], partition: int) -> tuple[Any, ...]:
    """`_APPEND`'s arguments: a column per field ($1-$9), then the partition ($10)."""
    return (
        [e.event_id for e, _ in events],
        [e.dedup_key for e, _ in events],
        [e.timestamp for e, _ in events],
        [e.topic for e, _ in events],
        [e.correlation_id for e, _ in events],
        [e.causation_id for e, _ in events],
        [orjson.dumps(e.payload).decode() for e, _ in events],
        [e.version for e, _ in events],
        [seq for _, seq in events],
        partition,
    )


def _appended(rows: Sequence[asyncpg.Record]) -> AppendResult:
    return AppendResult(
        winners={r["event_id"]: r["seq"] for r in rows},
        inserted=sum(1 for r in rows if r["inserted"]),
    )


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


def store_error(what: str, exc: BaseException) -> StoreError:
    """`exc` (a database library error) in our hierarchy: StoreUnavailable when transient, StoreRefused for a
    value or constraint Postgres refuses."""
    kind = StoreError
    if is_transient(exc):
        kind = StoreUnavailable
    elif isinstance(exc, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError):
        kind = StoreRefused
    return kind(f"{what}: {exc or type(exc).__name__}")


def _append_sql(*, fenced: bool) -> str:
    """The append: the batch's rows inserted (ON CONFLICT DO NOTHING), then every dedup key's logged row.

    Fenced, the writer's epoch is checked in the statement itself: one round trip, committed on its own,
    instead of BEGIN, the fence's check, the insert and COMMIT. The lease row is locked first (as the fence's
    check does): a new leader's epoch bump waits for this statement, or this statement waits for the bump and
    then reads the new epoch and inserts nothing. One more row (inserted NULL) carries the epoch read."""
    lease = "lease AS (\n    SELECT epoch FROM writer_lease WHERE partition = $11 FOR UPDATE\n), " if fenced else ""
    check = "    WHERE (SELECT epoch FROM lease) = $12\n" if fenced else ""
    epoch = "UNION ALL\nSELECT NULL, (SELECT epoch FROM lease), NULL\n" if fenced else ""
    return f"""
WITH {lease}input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::int[], $9::bigint[]) WITH ORDINALITY
        AS t(event_id, dedup_key, time, topic, correlation_id, causation_id, payload, version, stream_seq, ord)
{check}), ins AS (
    INSERT INTO events (event_id, dedup_key, time, topic, correlation_id, causation_id, payload, version,
                        stream_seq, partition)
    SELECT event_id, dedup_key, time, topic, correlation_id, causation_id, payload::jsonb, version, stream_seq,
           $10::smallint
    FROM input ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING event_id, seq
)
SELECT event_id, seq, true AS inserted FROM ins
UNION ALL
SELECT e.event_id, e.seq, false FROM events e WHERE e.dedup_key = ANY($2::text[])
{epoch}"""


_APPEND = _append_sql(fenced=False)
_APPEND_FENCED = _append_sql(fenced=True)

_WINNERS = "SELECT event_id, seq, false AS inserted FROM events WHERE dedup_key = ANY($1::text[])"

_COLUMNS = "seq, event_id, dedup_key, time, topic, correlation_id, causation_id, payload::text AS payload, version"


def _sql(model: type[Payload]) -> str:
    """A payload class's topic as an SQL string literal (topics are `[a-z_.]` only: nothing to escape)."""
    return f"'{model.TOPIC}'"


# Projections never read an oracle's reply or a change's record; a rebuild leaves those big fields in
# Postgres instead of shipping and parsing them.
_PROJECTED_PAYLOAD = (
    f"CASE WHEN topic IN ({_sql(ReplayRequested)}, {_sql(ReplayInvoked)}) "
    "THEN (payload - 'record' - 'reply')::text "
    f"WHEN topic = {_sql(JudgeCalled)} THEN (payload - 'raw_text')::text ELSE payload::text END"
)

# A replay's event is folded by its id alone: building that one-field object costs Postgres a fraction of
# deleting the big fields from the whole payload.
_FOLDED_PAYLOAD = (
    "CASE WHEN topic LIKE 'verify.replay.%' THEN jsonb_build_object('replay_id', payload->'replay_id')::text "
    f"WHEN topic = {_sql(JudgeCalled)} THEN (payload - 'raw_text')::text "
    "ELSE payload::text END"
)


def _row_to_envelope(row: asyncpg.Record) -> Envelope:
    # Rows were validated when appended: skip re-validation on the hot replay path.
    return Envelope.model_construct(
        event_id=row["event_id"],
        timestamp=row["time"],
        topic=row["topic"],
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        payload=orjson.loads(row["payload"]),
        version=row["version"],
        dedup_key=row["dedup_key"],
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pool connection goes back as it is: its sessions hold nothing to reset (no LISTEN, session settings,
    advisory locks or cursors outside a transaction: the writer's lease and the migrations lock use connections
    of their own), and asyncpg still ends an open transaction first. asyncpg's own reset is one more query on
    every release: measured, half the CPU and half the time of a small pooled query (about 250 → 130 µs)."""


class EventStore:
    """An asyncpg pool implementing EventRecorder, LogReader and LogQueries (`ports.log.EventLog`)."""

    def __init__(
        self, database_url: str, *, min_size: int = 1, max_size: int = 4, statement_timeout_s: float = 30.0
    ) -> None:
        self._statement_timeout_ms = str(int(statement_timeout_s * 1000))
        self.database_url = database_url
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> Self:
        try:
            self._pool = await asyncpg.create_pool(
                self.database_url,
                min_size=self._min_size,
                max_size=self._max_size,
                # A stuck lock or query fails (and is retried, logged) instead of stalling a role silently.
                server_settings={"statement_timeout": self._statement_timeout_ms},
                reset=_keep_session,
            )
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("cannot connect to Postgres", exc) from exc
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("event store is not open")
        return self._pool

    # ---- writes: StateCoordinator only ----

    async def append_batch(
        self,
        events: Sequence[tuple[Envelope, int]],
        parked: Sequence[ParkedEvent] = (),
        retried: Sequence[int] = (),
        *,
        fence: Fence | None = None,
        partition: int = 0,
    ) -> AppendResult:
        """Append events (with their stream sequences) to `partition`, park poison and mark re-driven rows,
        in one tx."""
        columns = append_arguments(events, partition)
        lease = None if fence is None else fence.lease
        if events and not parked and not retried and (fence is None or lease is not None):
            return await self._append_alone(columns, lease)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if fence is not None:
                    await fence.check(conn)
                rows: list[asyncpg.Record] = []
                if events:
                    rows = await conn.fetch(_APPEND, *columns)
                if parked:
                    await conn.executemany(
                        "INSERT INTO parked_events (stream_seq, subject, raw, reason) VALUES ($1, $2, $3, $4) "
                        "ON CONFLICT (stream_seq) DO NOTHING",
                        [(p.stream_seq, p.subject, p.raw, p.reason) for p in parked],
                    )
                if retried:
                    await conn.execute(
                        "UPDATE parked_events SET retried_at = now() WHERE id = ANY($1::bigint[])",
                        list(retried),
                    )
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("append failed", exc) from exc
        return _appended(rows)

    async def _append_alone(self, columns: tuple[Any, ...], lease: tuple[str, int] | None) -> AppendResult:
        """Events only (the usual batch): one statement, its own transaction, the lease's epoch checked in it."""
        try:
            if lease is None:
                rows = await self.pool.fetch(_APPEND, *columns)
            else:
                rows = await self.pool.fetch(_APPEND_FENCED, *columns, *lease)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("append failed", exc) from exc
        if lease is not None:
            partition, epoch = lease
            current = next((r["seq"] for r in rows if r["inserted"] is None), None)  # the epoch's row
            if current != epoch:  # nothing was inserted
                raise WriterFenced(f"writer epoch {epoch} of {partition!r} is stale (lease epoch {current})")
            rows = [r for r in rows if r["inserted"] is not None]
        if len(rows) < len(set(columns[1])):
            # A row another statement committed while this one waited (for the lease row, or on a dedup key)
            # is not in this statement's snapshot: its key conflicted, but the read of the winners missed it.
            # Read them again, in a statement of their own.
            mine = [r for r in rows if r["inserted"]]
            known = {r["event_id"] for r in mine}
            try:
                again = await self.pool.fetch(_WINNERS, columns[1])
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
                raise store_error("append failed", exc) from exc
            rows = [*mine, *(r for r in again if r["event_id"] not in known)]
        return _appended(rows)

    # ---- reads ----

    async def run_events(self, run_id: str, topics: Sequence[str] | None = None) -> list[Envelope]:
        query = f"SELECT {_COLUMNS} FROM events WHERE correlation_id = $1"
        args: list[Any] = [f"run-{run_id}"]
        if topics:
            query += " AND topic = ANY($2::text[])"
            args.append(list(topics))
        try:
            rows = await self.pool.fetch(query + " ORDER BY seq", *args)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("event log unavailable", exc) from exc
        return [_row_to_envelope(r) for r in rows]

    async def stream(
        self, *, after_seq: int = 0, partition: int | None = None, prefetch: int = 5000
    ) -> AsyncIterator[tuple[int, LogEvent]]:
        """Every event (of one partition, or all) in writer order, through a server-side cursor (never all
        in memory)."""
        positions = None if partition is None else {partition: after_seq}
        async for rows in self.stream_rows(after_seq=after_seq, positions=positions, batch=prefetch):
            for seq, event_id, at, topic, correlation_id, payload, _ in rows:
                yield seq, LogEvent(event_id, at, topic, correlation_id, orjson.loads(payload or b"{}"))

    async def stream_rows(
        self,
        *,
        after_seq: int = 0,
        positions: Mapping[int, int] | None = None,
        batch: int = 5000,
        payload_topics: Sequence[str] | None = None,
    ) -> AsyncIterator[Sequence[LogRow]]:
        """Every event in writer order as raw rows `(seq, event_id, time, topic, correlation_id, payload,
        partition)`, `batch` rows per server round trip, the payload as JSON text (without replay records and
        oracle replies). With `payload_topics` (replay), other topics' payloads are NULL and replay scores are
        left out too: replay skips what it never reads.

        `positions` (partition → last position already read) reads only those partitions, each after its own
        position: positions are in commit order per partition only, so one global `seq > n` could skip a row
        another partition committed late. Without it: every partition after `after_seq`.

        One read-only repeatable-read transaction: a consistent cut even while the writers append."""
        payload = _PROJECTED_PAYLOAD
        where = "seq > $1"
        args: list[Any] = [after_seq]
        if positions is not None:
            # One slot per partition (NULL: not read); the first condition lets Postgres range-scan the seq
            # index, the second keeps each partition's own position.
            after = [positions.get(k) for k in range(max(positions, default=-1) + 1)]
            args = [min(positions.values(), default=0), after]
            where = "seq > $1 AND seq > ($2::bigint[])[partition + 1]"
        if payload_topics is not None:
            payload = f"CASE WHEN topic = ANY(${len(args) + 1}::text[]) THEN {_FOLDED_PAYLOAD} END"
            args.append(list(payload_topics))
        query = (
            f"SELECT seq, event_id, time, topic, correlation_id, {payload} AS payload, partition "
            f"FROM events WHERE {where} ORDER BY seq"
        )
        try:
            async with self.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
                cursor = await conn.cursor(query, *args)
                pending = asyncio.ensure_future(cursor.fetch(batch))
                try:
                    while rows := await pending:
                        # Ask for the next batch before handing this one out: Postgres reads it (on the other
                        # core) while the caller folds this one, instead of each side waiting for the other.
                        pending = asyncio.ensure_future(cursor.fetch(batch))
                        await asyncio.sleep(0)  # lets the request go out now
                        yield rows
                finally:
                    if not pending.done():
                        pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, *TRANSIENT_ERRORS, asyncpg.PostgresError):
                        await pending
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("event log read failed", exc) from exc

    async def max_seq(self) -> int:
        return int(await self._value("SELECT coalesce(max(seq), 0) FROM events"))

    async def count(self) -> int:
        return int(await self._value("SELECT count(*) FROM events"))

    async def _value(self, query: str) -> Any:
        try:
            return await self.pool.fetchval(query)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("event log unavailable", exc) from exc

    async def parked(self, *, include_retried: bool = False, limit: int = 100) -> list[ParkedEvent]:
        where = "" if include_retried else "WHERE retried_at IS NULL"
        try:
            rows = await self.pool.fetch(
                f"SELECT id, stream_seq, subject, raw, reason, parked_at, retried_at FROM parked_events {where} "
                "ORDER BY id LIMIT $1",
                limit,
            )
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("parked events unavailable", exc) from exc
        return [ParkedEvent(**dict(r)) for r in rows]

    async def probe(self, timeout: float) -> None:
        """`SELECT 1` on a connection of its own, never the pool's (requests blocked on a lock may hold all
        of those): StoreUnavailable unless Postgres answers within `timeout`."""
        try:
            conn = await asyncpg.connect(self.database_url, timeout=timeout)
        except (*TRANSIENT_ERRORS, TimeoutError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"unreachable: {exc or type(exc).__name__}") from exc
        try:
            await conn.fetchval("SELECT 1", timeout=timeout)
        except (*TRANSIENT_ERRORS, TimeoutError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"unreachable: {exc or type(exc).__name__}") from exc
        finally:
            conn.terminate()  # never waits on the server

    async def ping(self) -> None:
        try:
            await self.pool.fetchval("SELECT 1")
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("Postgres unreachable", exc) from exc

    async def stalled_runs(self, older_than_s: float) -> list[StalledRun]:
        """Runs the log holds as still going (requested, neither certified nor failed) whose last event
        was appended more than `older_than_s` ago, with that time and that event's log position. Measured
        on the log, in the writer's own clock, never on a read model that may lag."""
        query = f"""
            SELECT r.correlation_id, max(e.appended_at) AS last, max(e.seq) AS last_seq
            FROM events r JOIN events e ON e.correlation_id = r.correlation_id
            WHERE r.topic = {_sql(RunRequested)}
              AND NOT EXISTS (
                  SELECT 1 FROM events t WHERE t.correlation_id = r.correlation_id
                  AND t.topic IN ({_sql(CertificateIssued)}, {_sql(RunFailed)}))
            GROUP BY r.correlation_id
            HAVING max(e.appended_at) < now() - make_interval(secs => $1)
        """
        try:
            rows = await self.pool.fetch(query, older_than_s)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("stalled-run query failed", exc) from exc
        return [StalledRun(r["correlation_id"].removeprefix("run-"), r["last"], int(r["last_seq"])) for r in rows]

    async def last_positions(self, run_ids: Sequence[str]) -> dict[str, int]:
        """Per run: the log position of its last event (runs without events are absent)."""
        if not run_ids:
            return {}
        try:
            rows = await self.pool.fetch(
                "SELECT correlation_id, max(seq) AS last FROM events WHERE correlation_id = ANY($1::text[]) "
                "GROUP BY correlation_id",
                [f"run-{r}" for r in run_ids],
            )
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("log position query failed", exc) from exc
        return {r["correlation_id"].removeprefix("run-"): int(r["last"]) for r in rows}

    async def judge_usage(self, run_ids: Sequence[str]) -> dict[str, JudgeTotals]:
        """Per run: judge calls logged, their tokens and cost. Each call is one row (one dedup key), so a
        redelivered call is counted once; runs without logged calls are absent."""
        if not run_ids:
            return {}
        query = f"""
            SELECT correlation_id, payload->>'judge' AS judge, count(*) AS calls,
                   coalesce(sum((payload->>'input_tokens')::bigint), 0) AS input_tokens,
                   coalesce(sum((payload->>'output_tokens')::bigint), 0) AS output_tokens,
                   coalesce(sum((payload->>'cost_usd')::float8), 0) AS cost_usd
            FROM events WHERE topic = {_sql(JudgeCalled)} AND correlation_id = ANY($1::text[])
            GROUP BY correlation_id, payload->>'judge'
        """
        try:
            rows = await self.pool.fetch(query, [f"run-{r}" for r in run_ids])
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("judge usage query failed", exc) from exc
        per_run: dict[str, list[Any]] = {}
        for r in rows:
            per_run.setdefault(r["correlation_id"].removeprefix("run-"), []).append(r)
        return {
            run: JudgeTotals(
                sum(int(r["calls"]) for r in judged),
                sum(int(r["input_tokens"]) for r in judged),
                sum(int(r["output_tokens"]) for r in judged),
                sum(float(r["cost_usd"]) for r in judged),
                {
                    str(r["judge"] or ""): (int(r["input_tokens"]), int(r["output_tokens"]), float(r["cost_usd"]))
                    for r in judged
                },
            )
            for run, judged in per_run.items()
        }

    async def has_dedup_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these dedup keys are already stored (one query on the unique index)."""
        if not keys:
            return set()
        try:
            rows = await self.pool.fetch("SELECT dedup_key FROM events WHERE dedup_key = ANY($1::text[])", list(keys))
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("dedup lookup failed", exc) from exc
        return {r["dedup_key"] for r in rows}

    async def run_events_page(self, run_id: str, *, after: int = 0, limit: int = 100) -> list[tuple[int, Envelope]]:
        """One page of a run's events in log order with their log positions: those after position `after`
        (a cursor: the last position the caller has), at most `limit` (the (correlation_id, seq) index)."""
        try:
            rows = await self.pool.fetch(
                f"SELECT {_COLUMNS} FROM events WHERE correlation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                f"run-{run_id}",
                after,
                limit,
            )
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("event log unavailable", exc) from exc
        return [(int(r["seq"]), _row_to_envelope(r)) for r in rows]

    async def run_log(self, run_id: str, *, timeout: float) -> list[tuple[int, LogEvent]]:
        """Every event of one run in log order with its position, as projections read it (without replay
        records, oracle replies and judge texts); the wait for a pooled connection and the query are each
        bounded by `timeout`: the API answers from it while its read models are not level with the log, so it
        must never hang (asyncpg cancels a timed-out query on the server)."""
        query = (
            f"SELECT seq, event_id, time, topic, correlation_id, {_PROJECTED_PAYLOAD} AS payload "
            "FROM events WHERE correlation_id = $1 ORDER BY seq"
        )
        try:
            async with self.pool.acquire(timeout=timeout) as conn:
                rows = await conn.fetch(query, f"run-{run_id}", timeout=timeout)
        except TimeoutError as exc:
            raise StoreUnavailable(f"event log did not answer within {timeout}s") from exc
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("event log unavailable", exc) from exc
        return [
            (
                int(r["seq"]),
                LogEvent(r["event_id"], r["time"], r["topic"], r["correlation_id"], orjson.loads(r["payload"])),
            )
            for r in rows
        ]
