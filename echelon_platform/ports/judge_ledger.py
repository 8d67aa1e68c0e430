"""The judge ledger's reads: a run's judge spending so far, and a logged judge answer by its cache key.

Implemented over the event log by `adapters.judge_ledger_store.PgJudgeLedger` (one query each); without it,
a stage computes the spending from the run's events and reuses no answer (`pipeline_workers/handlers/
judge_ledger.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RunSpending:
    """What a run's judge requests cost or may cost, as the log has them: answered calls at their billed
    cost, requests logged as started with no outcome at their bound (they may have been billed)."""

    billed: dict[str, float]  # attempt id → billed cost, of the calls logged with their attempt
    billed_other: float  # calls logged without an attempt id (a judge that sends nothing, older calls)
    open_attempts: dict[str, float]  # attempt id → its cost bound

    def total(self, local: dict[str, float] | None = None) -> float:
        """The run's spending with what this process knows and the log may not show yet (`local`: attempt
        id → its cost when it ended here, else its bound)."""
        pending = self.open_attempts | {a: c for a, c in (local or {}).items()}
        return (
            self.billed_other + sum(self.billed.values()) + sum(c for a, c in pending.items() if a not in self.billed)
        )


@dataclass(frozen=True, slots=True)
class LoggedAnswer:
    call_key: str
    raw_text: str


class JudgeLedgerReads(Protocol):
    async def run_spending(self, run_id: str) -> RunSpending: ...

    async def logged_answer(self, cache_key: str) -> LoggedAnswer | None:
        """The first usable answer logged under `cache_key` that was itself asked (not reused), or None."""
        ...
