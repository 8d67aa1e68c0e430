"""The WebSocket stream's building blocks, free of I/O where possible: which topics a subscription
selects, the NATS filter that covers them, who may see which event, and the bounded per-client queue."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from cachetools import LRUCache
from pydantic import BaseModel, ConfigDict, Field

from echelon_platform.domain.events import (
    TOPICS,
    CertificateIssued,
    ReplayFailed,
    ReplayInvoked,
    ReplayRequested,
    ReplayScored,
    RunIngesting,
    Subjects,
)

PUBLIC_TOPICS = frozenset({CertificateIssued.TOPIC})
# Events that only move a run's progress forward: the first to go when a client falls behind, because the
# run's state (GET /runs/{id}) and a later event carry the same information.
PROGRESS_TOPICS = frozenset(
    {
        RunIngesting.TOPIC,
        ReplayRequested.TOPIC,
        ReplayInvoked.TOPIC,
        ReplayScored.TOPIC,
        ReplayFailed.TOPIC,
    }
)
_TOKEN = re.compile(r"^[a-z_]+$")
MAX_TOPICS = 20


class Refused(Exception):
    """A subscription the client may not have; the message is sent to the client as the reason."""


class Subscribe(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    topics: list[str] = Field(min_length=1, max_length=MAX_TOPICS)
    correlation_id: str | None = Field(default=None, alias="correlationId", pattern=r"^run-[0-9A-Za-z_-]{1,64}$")
    since: int | None = Field(default=None, ge=0, description="Stream sequence already seen; resume after it")

    @property
    def run_id(self) -> str | None:
        return self.correlation_id.removeprefix("run-") if self.correlation_id else None


def pattern_matches(pattern: str, topic: str) -> bool:
    """NATS subject matching (`*` = one token, trailing `>` = one or more)."""
    p, t = pattern.split("."), topic.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(t) > i
        if i >= len(t) or (token != "*" and token != t[i]):
            return False
    return len(p) == len(t)


def selected_topics(patterns: list[str]) -> frozenset[str]:
    """The known topics the patterns select; Refused naming the first unusable pattern."""
    out: set[str] = set()
    for pattern in patterns:
        tokens = pattern.split(".")
        if tokens[0] != "verify" or len(tokens) < 2:
            raise Refused(f"topic {pattern[:80]!r} refused: topics are `verify.<aggregate>.<event>` patterns")
        if len(tokens) > 3:
            raise Refused(f"topic {pattern[:80]!r} refused: pick one run with correlationId, not in the topic")
        for i, token in enumerate(tokens[1:], start=1):
            if not (_TOKEN.match(token) or token == "*" or (token == ">" and i == len(tokens) - 1)):
                raise Refused(f"topic {pattern[:80]!r} refused: {token[:40]!r} is not a topic token or wildcard")
        matched = {t for t in TOPICS if pattern_matches(pattern, t)}
        if not matched:
            raise Refused(f"topic {pattern[:80]!r} refused: it matches none of {', '.join(TOPICS)}")
        out |= matched
    return frozenset(out)


def nats_filter(subjects: Subjects, patterns: list[str], run_id: str | None) -> str:
    """One filter subject covering every pattern (NATS 2.9 has no multi-filter consumers); narrower
    filtering happens per event. One run: all its subjects. One pattern: that pattern. Else the common
    aggregate, or everything."""
    if run_id is not None:
        return subjects.of_run(run_id)
    if len(patterns) == 1:
        tokens = patterns[0].split(".")
        if tokens[-1] == ">":
            return subjects.user_pattern(patterns[0])
        return f"{subjects.user_pattern('.'.join(tokens))}.{subjects.run_wildcard}"
    aggregates = {p.split(".")[1] for p in patterns}
    if len(aggregates) == 1 and (agg := next(iter(aggregates))) not in ("*", ">"):
        return f"{subjects.root}.{agg}.>"
    return subjects.everything


def split_subject(subjects: Subjects, subject: str) -> tuple[str, str] | None:
    """(topic, run_id) of `<root>.<aggregate>.<event>[.<partition>].<run_id>`, or None for anything else."""
    rest = subject.removeprefix(subjects.root + ".")
    parts = rest.split(".")
    if rest == subject or len(parts) != (4 if subjects.partitioning.partitioned else 3):
        return None
    return f"verify.{parts[0]}.{parts[1]}", parts[-1]


@dataclass(frozen=True, slots=True)
class Frame:
    data: str
    seq: int | None = None  # stream sequence of an event frame; None for control frames
    progress: bool = False


class ClientQueue:
    """Bounded frames for one client. When full, the oldest progress event makes room (coalescing);
    when none is left to drop, `offer` says so and the client is closed with a resume point."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._frames: deque[Frame] = deque()
        self.dropped = 0  # progress events dropped since the client was last told
        self.total_dropped = 0
        self.ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: Frame) -> bool:
        """True when the frame is queued (or, being progress, coalesced away); False: close the client."""
        if len(self._frames) >= self.maxsize:
            victim = next((i for i, queued in enumerate(self._frames) if queued.progress), None)
            if victim is None:
                if not frame.progress:
                    return False
                self.dropped += 1  # nothing older to drop: this progress event itself goes
                self.total_dropped += 1
                return True
            del self._frames[victim]
            self.dropped += 1
            self.total_dropped += 1
        self._frames.append(frame)
        self.ready.set()
        return True

    def pop(self) -> Frame | None:
        if not self._frames:
            self.ready.clear()
            return None
        return self._frames.popleft()

    def drop_events(self) -> None:
        """Forget queued events (a new subscription replaces the old one); control frames stay."""
        self._frames = deque(f for f in self._frames if f.seq is None)
        if not self._frames:
            self.ready.clear()


class OwnerCache:
    """run id → owning user, shared by all connections (an owner never changes, so entries never go stale).

    Bounded LRU; concurrent misses for one run share one lookup."""

    def __init__(self, lookup: Callable[[str], Awaitable[str | None]], maxsize: int = 100_000) -> None:
        self._lookup = lookup
        self._owners: LRUCache[str, str] = LRUCache(maxsize)
        self._inflight: dict[str, asyncio.Future[str | None]] = {}

    def learn(self, run_id: str, owner: str) -> None:
        self._owners[run_id] = owner

    async def owner(self, run_id: str) -> str | None:
        known = self._owners.get(run_id)
        if known is not None:
            return known
        pending = self._inflight.get(run_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._inflight[run_id] = future
        try:
            owner = await self._lookup(run_id)
            future.set_result(owner)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so an unawaited future does not warn
            raise
        finally:
            del self._inflight[run_id]
        if owner is not None:
            self.learn(run_id, owner)
        return owner


class PendingSockets:
    """Sockets accepted but not yet authenticated, in all and per client address (per API process, so a
    crash leaves nothing to clean up). Unauthenticated sockets cost a task and buffers each: without a cap,
    anyone could open thousands."""

    def __init__(self, *, limit: int, per_address: int) -> None:
        self.limit = limit
        self.per_address = per_address
        self._open: Counter[str] = Counter()
        self.total = 0

    @contextlib.contextmanager
    def hold(self, address: str) -> Iterator[str | None]:
        """None (and counted until the block ends) when under both caps; else why the socket is refused."""
        if self.total >= self.limit:
            yield f"too many unauthenticated connections (at most {self.limit}); retry later"
            return
        if self._open[address] >= self.per_address:
            yield f"too many unauthenticated connections from your address (at most {self.per_address}); retry later"
            return
        self._open[address] += 1
        self.total += 1
        try:
            yield None
        finally:
            self.total -= 1
            self._open[address] -= 1
            if not self._open[address]:
                del self._open[address]
