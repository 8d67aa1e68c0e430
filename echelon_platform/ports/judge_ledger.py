"""The judge ledger's reads: a run's judge spending so far, and a logged judge answer by its cache key.

Implemented over the event log by `adapters.judge_ledger_store.PgJudgeLedger` (one query each); without it,
a stage computes the spending from the run's events and reuses no answer (`pipeline_workers/handlers/
judge_ledger.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RunSpending:
    """What a run's judge requests cost or may cost: answered calls at their billed cost, requests logged as
    started with no outcome at their bound (they may have been billed)."""

    billed_usd: float
    open_attempts: dict[str, float]  # attempt id → its cost bound

    def total(self, also_open: dict[str, float] | None = None) -> float:
        bounds = dict(self.open_attempts) | (also_open or {})
        return self.billed_usd + sum(bounds.values())


@dataclass(frozen=True, slots=True)
class LoggedAnswer:
    call_key: str
    raw_text: str


class JudgeLedgerReads(Protocol):
    async def run_spending(self, run_id: str) -> RunSpending: ...

    async def logged_answer(self, cache_key: str) -> LoggedAnswer | None:
        """The first usable answer logged under `cache_key` that was itself asked (not reused), or None."""
        ...
