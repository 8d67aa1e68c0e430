"""The judge ledger of one replay: every request is logged before it is sent, every outcome as it comes.

`verify.judge.started` is published (and acknowledged by JetStream) before the request leaves, so a process
killed mid-call leaves a started attempt with no outcome: the log never shows fewer requests than the
provider could bill. The run's budget is checked there too (`max_cost_usd`: the request is not sent when its
cost bound would pass it), and answers the log already holds for exactly the same request are reused
instead of paid for again (unless the run opted out with `judge_cache: false`).

An outcome is published as the call ends, without waiting for its acknowledgement: the handler's next step
(the oracle call, after the question) overlaps it, and `settle()` waits for it before the handler's own
events go out. With `defer_outcomes` (a handler that publishes its own events
right after its last call: score) it goes out with what is published next, the next request's start or the
handler's events: one acknowledged publish instead of two, and never later than before the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import defaultdict

from echelon_platform.domain.certificate import BUDGET_REASON
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import JudgeCalled, JudgeStarted, make_event
from echelon_platform.domain.values import JudgeAttempt, JudgeCall
from echelon_platform.errors import BudgetExceeded
from echelon_platform.ports.bus import Publisher
from echelon_platform.ports.judge_ledger import JudgeLedgerReads, RunSpending
from echelon_platform.ports.log import LogReader
from pipeline_workers.handlers.judge_log import judge_events
from pipeline_workers.scoring.base import CallLog, Reusable

# Requests of a run sent from this process (attempt id → its bound, then its cost once it ended) until the log
# shows their outcome (the writer logs them a moment later), and a lock per run so two replays of one run
# cannot both take the budget's last room.
_LOCAL: defaultdict[str, dict[str, float]] = defaultdict(dict)
_LOCKS: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _lock(run_id: str) -> asyncio.Lock:
    lock = _LOCKS.get(run_id)
    if lock is None:
        lock = _LOCKS[run_id] = asyncio.Lock()
    return lock


class JudgeLedger(CallLog):
    def __init__(
        self,
        publisher: Publisher,
        log: LogReader,
        reads: JudgeLedgerReads | None,
        run_id: str,
        replay_id: str,
        *,
        causation_id: str,
        max_cost_usd: float | None = None,
        reuse: bool = True,
        defer_outcomes: bool = False,
    ) -> None:
        super().__init__()
        self.publisher = publisher
        self.log = log
        self.reads = reads
        self.run_id = run_id
        self.replay_id = replay_id
        self.causation_id = causation_id
        self.max_cost_usd = max_cost_usd
        self.reuse = reuse
        self.defer_outcomes = defer_outcomes
        self.keys: list[str] = []  # dedup keys of every call, in call order
        self._published: set[int] = set()
        self._deferred: list[tuple[JudgeCall, list[Envelope]]] = []  # outcomes to publish with the next event
        self._publishing: list[asyncio.Task[list[int]]] = []  # outcomes sent, acknowledgement not awaited yet

    async def started(self, attempt: JudgeAttempt) -> None:
        async with _lock(self.run_id):
            if self.max_cost_usd is not None:
                spending = await self._spending()
                local = _LOCAL[self.run_id]
                for logged in spending.billed.keys() & local.keys():
                    del local[logged]  # the log has its outcome now
                committed = spending.total(local)
                if committed + attempt.max_cost_usd > self.max_cost_usd:
                    raise BudgetExceeded(
                        f"{BUDGET_REASON}: the run's max_cost_usd of {self.max_cost_usd:g} USD would be passed "
                        f"({committed:.6f} USD spent or in flight, the next judge request may cost up to "
                        f"{attempt.max_cost_usd:.6f})"
                    )
            _LOCAL[self.run_id][attempt.attempt_id] = attempt.max_cost_usd
        event = make_event(
            JudgeStarted(run_id=self.run_id, replay_id=self.replay_id, **attempt.model_dump()),
            causation_id=self.causation_id,
        )
        deferred, self._deferred = self._deferred, []
        try:
            await self.publisher.publish_many([*(e for _, events in deferred for e in events), event])
        except BaseException:
            _LOCAL[self.run_id].pop(attempt.attempt_id, None)  # not sent
            self._deferred = deferred + self._deferred
            raise
        self._published.update(id(call) for call, _ in deferred)

    async def finished(self, call: JudgeCall) -> None:
        self.append(call)
        events, keys = judge_events(self.run_id, self.replay_id, [call], causation_id=self.causation_id)
        self.keys += keys
        if call.attempt_id is not None and call.attempt_id in _LOCAL.get(self.run_id, {}):
            _LOCAL[self.run_id][call.attempt_id] = call.cost_usd  # billed: counted until the log has it
        if self.defer_outcomes:
            self._deferred.append((call, events))
            return
        self._publishing.append(asyncio.create_task(self.publisher.publish_many(events)))
        self._published.add(id(call))

    async def publish_remaining(self) -> None:
        """Publish the outcomes not published yet, as far as the bus allows (the handler is failing anyway)."""
        deferred, self._deferred = self._deferred, []
        if deferred:
            with contextlib.suppress(Exception):
                await self.publisher.publish_many([e for _, events in deferred for e in events])
                self._published.update(id(call) for call, _ in deferred)

    async def settle(self) -> None:
        """Wait until every outcome sent is acknowledged; the first failure is raised (the message is then
        handled again, as when the publish itself failed)."""
        publishing, self._publishing = self._publishing, []
        failures = [
            r for r in await asyncio.gather(*publishing, return_exceptions=True) if isinstance(r, BaseException)
        ]
        if failures:
            raise failures[0]

    async def reusable(self, cache_key: str) -> Reusable | None:
        if not self.reuse or self.reads is None:
            return None
        answer = await self.reads.logged_answer(cache_key)
        return None if answer is None else Reusable(answer.call_key, answer.raw_text)

    def remaining(self) -> tuple[list[Envelope], list[str]]:
        """Events of the calls not published yet (a judge that sends nothing only appends its calls), and
        the dedup keys of every call in call order."""
        events, keys = judge_events(self.run_id, self.replay_id, list(self), causation_id=self.causation_id)
        unpublished = [e for call, e in zip(self, events, strict=True) if id(call) not in self._published]
        return unpublished, keys

    async def _spending(self) -> RunSpending:
        if self.reads is not None:
            return await self.reads.run_spending(self.run_id)
        # No ledger query (in-memory ports): the same sums from the run's judge events.
        events = await self.log.run_events(self.run_id, [JudgeStarted.TOPIC, JudgeCalled.TOPIC])
        called = [e.payload for e in events if e.topic == JudgeCalled.TOPIC]
        billed = {str(p["attempt_id"]): float(p.get("cost_usd", 0.0)) for p in called if p.get("attempt_id")}
        other = sum(float(p.get("cost_usd", 0.0)) for p in called if not p.get("attempt_id"))
        started = {
            str(e.payload["attempt_id"]): float(e.payload.get("max_cost_usd", 0.0))
            for e in events
            if e.topic == JudgeStarted.TOPIC and e.payload["attempt_id"] not in billed
        }
        return RunSpending(billed, other, started)
