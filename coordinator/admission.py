"""The writer's checks that need the log or the published keys, between decoding a batch and appending it.

An event the writer refuses here is parked with its reason (never logged), so it cannot take the place of
the genuine one: a certificate must be signed by a published key; an event of a run whose `run.requested`
is neither in the log nor earlier in the batch belongs to no run; a watchdog failure decided on a log
position the run has since moved past is stale (the run progressed while the decision was being made).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from cachetools import LRUCache

from echelon_platform.adapters.event_store import EventStore
from echelon_platform.adapters.signing_keys import PublishedKeys
from echelon_platform.config import Settings
from echelon_platform.domain.admission import certificate_key_id, certificate_refusal
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import CertificateIssued, RunFailed, RunRequested, parse_payload
from echelon_platform.domain.projections import NOT_RUN_EVENTS
from echelon_platform.ports.log import LogQueries

KEYS_TTL_S = 60.0  # a key withdrawn from the published set stops verifying within this long
UNKNOWN_KEY_RETRY_S = 5.0  # a key id still unknown after a fresh read is not looked up again sooner


class TrustedKeys:
    """The published signing keys, cached; read again when a certificate names a key id the cache does not
    hold (the certify stage publishes a new key before it signs with it), or after `ttl_s`."""

    def __init__(self, load: Callable[[], Awaitable[Mapping[str, bytes]]], *, ttl_s: float = KEYS_TTL_S) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._keys: Mapping[str, bytes] = {}
        self._loaded_at: float | None = None
        self._unknown: dict[str, float] = {}  # key id → when a fresh read did not find it
        # Certificate events this process verified before logging them (log rows never change): a rebuild
        # in the same process need not verify them again.
        self._verified: LRUCache[str, bool] = LRUCache(200_000)

    @classmethod
    def published(cls, store: EventStore, settings: Settings) -> TrustedKeys:
        """The keys whose chain reaches the root the settings pin (see `PublishedKeys`)."""
        # A new PublishedKeys per read: its own short cache must not hide a key published a moment ago.
        return cls(lambda: PublishedKeys(store, settings).public_keys())

    async def for_ids(self, key_ids: Collection[str]) -> Mapping[str, bytes]:
        """The keys, read again at most once for this call if any of `key_ids` is unknown."""
        now = time.monotonic()
        stale = self._loaded_at is None or now - self._loaded_at > self._ttl_s
        missing = [k for k in key_ids if k not in self._keys and now - self._unknown.get(k, -1e9) > UNKNOWN_KEY_RETRY_S]
        if stale or missing:
            self._keys = dict(await self._load())
            self._loaded_at = now
            for key_id in missing:
                if key_id not in self._keys:
                    self._unknown[key_id] = now
            if len(self._unknown) > 10_000:  # forgeries naming ever new key ids: forget the oldest memos
                self._unknown = dict(sorted(self._unknown.items(), key=lambda kv: kv[1])[-1000:])
        return self._keys

    def vouch(self, event_id: str) -> None:
        self._verified[event_id] = True

    async def refusal(self, document: Mapping[str, object], event_id: str | None = None) -> str | None:
        """Why this certificate document is not genuine, or None (see `certificate_refusal`). With the
        `event_id` of a logged event this process verified before logging it: None at once."""
        if event_id is not None and event_id in self._verified:
            return None
        key_id = certificate_key_id(document)
        keys = await self.for_ids([key_id] if key_id is not None else [])
        return certificate_refusal(document, keys)


@dataclass(frozen=True, slots=True)
class Refusal:
    stream_seq: int
    reason: str
    # The reason may pass by itself (the run's request arrives later, after a redelivery overtook it): the
    # writer hands the event back for a while before it parks it.
    may_pass_later: bool = False


class Admission:
    """Checks one decoded batch against the log (in batch order) and the published keys."""

    def __init__(self, store: LogQueries, keys: TrustedKeys, *, remembered_runs: int = 100_000) -> None:
        self.store = store
        self.keys = keys
        # Runs whose request is in the log (it never leaves): most batches need no query at all.
        self._requested: LRUCache[str, bool] = LRUCache(remembered_runs)

    async def check(self, events: Sequence[tuple[Envelope, int]]) -> list[Refusal]:
        """The events of the batch that must be parked, with their reasons. Safe to retry (no side effect
        beyond caches)."""
        requested = await self._requested_runs(events)
        positions = await self._positions_for_watchdog(events)
        keys = await self._keys_for(events)
        refused: list[Refusal] = []
        in_batch: set[str] = set()  # runs with an admitted event earlier in this batch
        for envelope, seq in events:
            run_id, topic = envelope.run_id, envelope.topic
            reason: str | None = None
            unknown_run = False
            if topic == RunRequested.TOPIC:
                requested.add(run_id)
            elif topic not in NOT_RUN_EVENTS and run_id not in requested:
                unknown_run = True
                reason = f"{topic} for run {run_id}, which was never requested (no verify.run.requested in the log)"
            elif topic == CertificateIssued.TOPIC:
                cert = parse_payload(envelope)
                assert isinstance(cert, CertificateIssued)
                reason = certificate_refusal(cert.certificate.model_dump(mode="json"), keys)
                if reason is None:
                    self.keys.vouch(envelope.event_id)
            elif topic == RunFailed.TOPIC:
                reason = _stale_decision(envelope, positions.get(run_id), run_id in in_batch)
            if reason is not None:
                refused.append(Refusal(seq, reason, may_pass_later=unknown_run))
            else:
                in_batch.add(run_id)
        return refused

    def logged(self, events: Sequence[tuple[Envelope, int]]) -> None:
        """Remember the runs whose request is now in the log (call after the append committed)."""
        for envelope, _ in events:
            if envelope.topic == RunRequested.TOPIC:
                self._requested[envelope.run_id] = True

    async def _requested_runs(self, events: Sequence[tuple[Envelope, int]]) -> set[str]:
        runs = {e.run_id for e, _ in events if e.topic not in NOT_RUN_EVENTS}
        known = {r for r in runs if r in self._requested}
        # Runs requested in this batch are looked up too: a redelivered request may follow events of a run
        # whose request was logged long ago.
        unknown = runs - known
        if unknown:
            # The natural dedup key of a run's request names the run: one unique-index lookup per run.
            stored = await self.store.has_dedup_keys([f"{RunRequested.TOPIC}:{r}" for r in sorted(unknown)])
            found = {k.removeprefix(f"{RunRequested.TOPIC}:") for k in stored}
            for run_id in found:
                self._requested[run_id] = True
            known |= found
        return known

    async def _positions_for_watchdog(self, events: Sequence[tuple[Envelope, int]]) -> dict[str, int]:
        fenced = {e.run_id for e, _ in events if e.topic == RunFailed.TOPIC and e.payload.get("as_of_seq") is not None}
        return await self.store.last_positions(sorted(fenced)) if fenced else {}

    async def _keys_for(self, events: Sequence[tuple[Envelope, int]]) -> Mapping[str, bytes]:
        ids = set()
        for envelope, _ in events:
            if envelope.topic == CertificateIssued.TOPIC:
                document = envelope.payload.get("certificate")
                key_id = certificate_key_id(document) if isinstance(document, Mapping) else None
                if key_id is not None:
                    ids.add(key_id)
        return await self.keys.for_ids(ids) if ids else {}


def _stale_decision(envelope: Envelope, last_logged: int | None, progressed_in_batch: bool) -> str | None:
    """A failure decided on log position `as_of_seq` (the watchdog's) is stale when the run has an event
    logged after that position, or one just before it in this batch: the run was not idle after all."""
    failed = parse_payload(envelope)
    assert isinstance(failed, RunFailed)
    if failed.as_of_seq is None:
        return None
    if progressed_in_batch or (last_logged is not None and last_logged > failed.as_of_seq):
        return (
            f"stale {failed.stage} decision: run {failed.run_id} progressed after log position "
            f"{failed.as_of_seq} it was decided at (now at {last_logged if last_logged is not None else '?'})"
        )
    return None
