"""Judge round trips as `verify.judge.called` events, and their dedup keys.

The key names the replay, the purpose, the judge, the round trip and a digest of the raw answer: a
redelivered message publishing the same call again is stored once, while a second real call made after a
redelivery (a different answer) is its own event — it was paid for, and the score made from it names it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import JudgeCalled, make_event
from echelon_platform.domain.values import JudgeCall


def call_key(replay_id: str, call: JudgeCall) -> str:
    """A sent request is keyed by its attempt id (each one may be billed: each is its own event); a reused
    answer by its cache key (reusing it again after a redelivery is the same event); a call that sends
    nothing (offline) by its answer."""
    if call.attempt_id is not None:
        last = call.attempt_id
    elif call.reused_from is not None and call.cache_key is not None:
        last = f"reused-{call.cache_key[:16]}"
    else:
        last = hashlib.sha256(call.raw_text.encode("utf-8")).hexdigest()[:16]
    return f"{replay_id}:{call.purpose}:{call.judge}:{call.round_trip}:{last}"


def judge_events(
    run_id: str, replay_id: str, calls: Sequence[JudgeCall], *, causation_id: str
) -> tuple[list[Envelope], list[str]]:
    """The events for ``calls`` and their dedup keys, in call order."""
    events = [
        make_event(
            JudgeCalled(run_id=run_id, replay_id=replay_id, call_key=call_key(replay_id, call), **call.model_dump()),
            causation_id=causation_id,
        )
        for call in calls
    ]
    return events, [e.dedup_key for e in events]


def reused_replays(events: Sequence[Envelope]) -> list[str]:
    """Replays with a judge answer reused from the log (`reused_from` set), from a run's events."""
    reused = (e for e in events if e.topic == JudgeCalled.TOPIC and e.payload.get("reused_from"))
    return sorted({str(e.payload["replay_id"]) for e in reused})
