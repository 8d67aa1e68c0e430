"""`echelon verify --watch`: follow one run live over the API's WebSocket (`/api/v1/stream`).

Protocol (see api/stream.py): the token as the first message, then one subscription to the run's events
(`correlationId`), which starts at the run's first event, so nothing is missed between the POST and the
subscription. `Progress` folds the events into a stage and counts (pure, tested on its own); `follow`
feeds it from the socket. A terminal gets one bar redrawn in place; a pipe gets one line per stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from echelon_platform.domain.events import (
    ReplayFailed,
    ReplayInvoked,
    ReplayScored,
    RunCertifying,
    RunCompleted,
    RunFailed,
    RunIngested,
    RunIngesting,
)
from echelon_platform.errors import EchelonError

# replay.requested is left out: it carries each change's whole diff and says nothing ingested does not.
TOPICS = ["verify.run.*", ReplayInvoked.TOPIC, ReplayScored.TOPIC, ReplayFailed.TOPIC]
ENDED = frozenset({RunCompleted.TOPIC, RunFailed.TOPIC})
STREAM_PATH = "/api/v1/stream"


class StreamUnavailable(EchelonError):
    """The WebSocket could not be used (not served, refused, dropped): the caller falls back to polling."""


@dataclass
class Progress:
    stage: str = "queued"
    total: int | None = None
    repeats: int = 1
    invoked: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    failed: int = 0
    ended: str | None = None  # "completed" or "failed: <reason>"

    def apply(self, topic: str, payload: dict[str, Any]) -> str | None:
        """Fold one event in; return the line announcing a new stage, or None if the stage is unchanged."""
        before = self.stage
        replay = str(payload.get("replay_id", ""))
        if topic == RunIngesting.TOPIC:
            self.stage = "ingesting"
        elif topic == RunIngested.TOPIC:
            self.total = int(payload.get("total", 0))
            self.stage = "ingested"
            self.repeats = int(payload.get("repeats") or 1)  # `total` counts replays: changes × repeats
            times = f" × {self.repeats} repeats" if self.repeats > 1 else ""
            return f"ingested {self.total // self.repeats} change(s){times} from {payload.get('commit_range', '?')}"
        elif topic == ReplayInvoked.TOPIC:
            self.invoked.add(replay)
            self.stage = "replaying" if self.stage in ("queued", "ingesting", "ingested") else self.stage
        elif topic in (ReplayScored.TOPIC, ReplayFailed.TOPIC):
            if topic.endswith("failed") and replay not in self.done:
                self.failed += 1
            self.done.add(replay)
            self.stage = "replaying" if self.stage in ("queued", "ingesting", "ingested") else self.stage
        elif topic == RunCertifying.TOPIC:
            self.stage = "certifying"
        elif topic == RunCompleted.TOPIC:
            self.stage, self.ended = "completed", "completed"
        elif topic == RunFailed.TOPIC:
            self.stage, self.ended = "failed", f"failed: {payload.get('reason', '?')}"
        if self.stage == before:
            return None
        if self.stage == "replaying":
            count = "?" if self.total is None else f"{self.total // self.repeats}"
            times = f" × {self.repeats} repeats" if self.repeats > 1 else ""
            return f"replaying {count} change(s){times}: oracle, then judge"
        return self.stage if self.ended is None else self.ended

    def bar(self, width: int = 30) -> str:
        done, total = len(self.done), self.total
        filled = int(width * done / total) if total else 0
        count = f"{done}/{total if total is not None else '?'}"
        extra = f" ({self.failed} failed)" if self.failed else ""
        return f"[{'#' * filled}{'.' * (width - filled)}] {count:>9} {self.stage}{extra}"


def stream_url(base: str) -> str:
    """ws(s):// form of the API's base URL."""
    scheme, sep, rest = base.partition("://")
    ws = {"http": "ws", "https": "wss"}.get(scheme.lower())
    if not sep or ws is None:
        raise StreamUnavailable(f"cannot derive a WebSocket URL from {base}")
    return f"{ws}://{rest.rstrip('/')}{STREAM_PATH}"


async def follow(base: str, token: str, run_id: str, on_event: Callable[[Progress, str | None], None]) -> Progress:
    """Follow the run until it ends; `on_event(progress, new_stage_line)` after each event."""
    try:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
    except ImportError as exc:  # an optional client: polling still works without it
        raise StreamUnavailable("the websockets package is not installed") from exc
    progress = Progress()
    try:
        async with connect(stream_url(base), open_timeout=10, max_size=2**24) as ws:
            await ws.send(json.dumps({"token": token}))
            await ws.send(json.dumps({"subscribe": {"topics": TOPICS, "correlationId": f"run-{run_id}"}}))
            async for raw in ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "refused":
                    raise StreamUnavailable(f"stream refused the subscription: {frame.get('reason')}")
                if kind != "event":
                    continue  # authenticated, subscribed, heartbeat, coalesced (counts come from the end)
                event = frame["event"]
                line = progress.apply(event["topic"], event.get("payload") or {})
                on_event(progress, line)
                if event["topic"] in ENDED:
                    return progress
    except ConnectionClosed as exc:
        reason = exc.rcvd.reason if exc.rcvd is not None else "closed"
        raise StreamUnavailable(f"stream closed: {reason}") from exc
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise StreamUnavailable(f"stream unavailable: {exc}") from exc
    raise StreamUnavailable("stream ended before the run did")
