"""Reads of the judge ledger in the event log: a run's judge spending so far, and logged judge answers.

Both are derived from `verify.judge.started` / `verify.judge.called` events only: the log is the truth,
and the answer cache needs no store of its own (`db/migrations/0008_judge_answer_cache.sql` indexes it).
"""

from __future__ import annotations

import asyncpg

from echelon_platform.adapters.event_store import TRANSIENT_ERRORS, EventStore, store_error
from echelon_platform.domain.events import JudgeCalled, JudgeStarted
from echelon_platform.ports.judge_ledger import LoggedAnswer, RunSpending

# The topics are spelled into the SQL (from the payload classes): the answer lookup's partial index
# (migration 0008) is chosen only when the query names its topic literally.
_SPENDING = f"""
    SELECT topic, payload->>'attempt_id' AS attempt_id,
           coalesce((payload->>'cost_usd')::float8, 0) AS cost,
           coalesce((payload->>'max_cost_usd')::float8, 0) AS bound
    FROM events
    WHERE correlation_id = $1 AND topic IN ('{JudgeStarted.TOPIC}', '{JudgeCalled.TOPIC}')
"""
_ANSWER = f"""
    SELECT payload->>'call_key' AS call_key, payload->>'raw_text' AS raw_text
    FROM events
    WHERE topic = '{JudgeCalled.TOPIC}' AND payload->>'cache_key' = $1
      AND (payload->>'usable')::boolean AND NOT coalesce((payload->>'raw_truncated')::boolean, false)
      AND payload->>'reused_from' IS NULL
    ORDER BY seq LIMIT 1
"""


class PgJudgeLedger:
    """`JudgeLedgerReads` over the Postgres log."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def run_spending(self, run_id: str) -> RunSpending:
        try:
            rows = await self.store.pool.fetch(_SPENDING, f"run-{run_id}")
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("judge ledger query failed", exc) from exc
        billed: dict[str, float] = {}
        other = 0.0
        started: dict[str, float] = {}
        for row in rows:
            if row["topic"] == JudgeCalled.TOPIC:
                if row["attempt_id"] is None:
                    other += float(row["cost"])
                else:
                    billed[row["attempt_id"]] = float(row["cost"])
            elif row["attempt_id"] is not None:
                started[row["attempt_id"]] = float(row["bound"])
        return RunSpending(billed, other, {a: b for a, b in started.items() if a not in billed})

    async def logged_answer(self, cache_key: str) -> LoggedAnswer | None:
        try:
            row = await self.store.pool.fetchrow(_ANSWER, cache_key)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise store_error("judge answer lookup failed", exc) from exc
        return None if row is None else LoggedAnswer(str(row["call_key"]), str(row["raw_text"]))
