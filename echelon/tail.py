"""`echelon tail`: follow events live by direct gets (bus_follower.py): no consumer, none to create."""

from __future__ import annotations

import sys
from typing import TextIO

import orjson

from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.bus_follower import StreamFollower
from echelon_platform.domain.envelope import Envelope
from echelon_platform.errors import EnvelopeError

_SUMMARY_FIELDS = ("replay_id", "total", "reason", "certificate_id", "construct_id", "rating", "stage")


def describe(seq: int, envelope: Envelope) -> str:
    """One readable line per event."""
    p = envelope.payload
    details = " ".join(f"{k}={p[k]}" for k in _SUMMARY_FIELDS if k in p and p[k] is not None)
    if "score" in p:
        s = p["score"]
        details += f" precision={s['precision']:.3f} recall={s['recall']:.3f} reply={s['reply_accuracy']:.2f}"
    if "certificate" in p:
        c = p["certificate"]
        details += f" composite={c['composite_score']} brier={c['brier']} replays={c['replay_count']}"
    stamp = envelope.timestamp.strftime("%H:%M:%S.%f")[:-3]
    return f"{seq:>8} {stamp} {envelope.topic:<26} run={envelope.run_id} {details}".rstrip()


async def tail(
    bus: Bus,
    subject: str,
    *,
    from_start: bool = False,
    as_json: bool = False,
    out: TextIO = sys.stdout,
    limit: int | None = None,
    idle_timeout: float | None = None,
) -> int:
    """Print events until interrupted (or `limit` events / `idle_timeout` seconds without one)."""
    after = 0 if from_start else await bus.last_sequence()
    follower = await StreamFollower(bus, subject, after=after).start()
    printed = 0
    try:
        while limit is None or printed < limit:
            msg = await follower.next(idle_timeout)
            if msg is None:
                break
            seq = msg.seq
            if as_json:
                out.write(
                    orjson.dumps({"seq": seq, "subject": msg.subject, "envelope": orjson.loads(msg.data)}).decode()
                )
            else:
                try:
                    out.write(describe(seq, Envelope.from_wire(msg.data)))
                except EnvelopeError as exc:
                    out.write(f"{seq:>8} {msg.subject} (unreadable: {exc})")
            out.write("\n")
            out.flush()
            printed += 1
    finally:
        await follower.close()
    return printed
