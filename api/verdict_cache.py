"""Verdicts of `/certificates/{id}/verify`, remembered per certificate content (bounded, least recently used).

A certificate never changes, so its verdict against one set of published keys never does either; the check
recomputes a thousand bootstrap resamples, so a public route must not redo it per request. The key is a
digest of the document as loaded (not just its claimed content_hash: a stored copy altered under the same
claimed hash is checked afresh) and of the keys. Concurrent requests for one document share one check, run
in a worker thread (off the event loop).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson

from echelon_platform.domain.cert_validity import Validity

MAX_VERDICTS = 4096


@dataclass(frozen=True)
class Verdict:
    """What `/verify` answers, without the certificate (a thousand-replay certificate is megabytes)."""

    hash_ok: bool
    aggregates_ok: bool
    signature_ok: bool
    key_id: str | None
    valid: bool

    @classmethod
    def of(cls, validity: Validity) -> Verdict:
        return cls(validity.hash_ok, validity.aggregates_ok, validity.signature_ok, validity.key_id, validity.valid)


def verdict_key(document: Mapping[str, object], public_keys: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
    for key_id, raw in sorted(public_keys.items()):
        digest.update(b"\0" + key_id.encode() + b"\0" + raw)
    return digest.hexdigest()


class VerdictCache:
    def __init__(self, size: int = MAX_VERDICTS) -> None:
        self._size = size
        self._done: OrderedDict[str, Verdict] = OrderedDict()
        self._running: dict[str, asyncio.Future[Verdict]] = {}
        self.checks = 0  # verdicts computed (the rest came from the cache)

    async def verdict(self, key: str, check: Callable[[], Validity]) -> Verdict:
        if key in self._done:
            self._done.move_to_end(key)
            return self._done[key]
        running = self._running.get(key)
        if running is None:
            self.checks += 1
            running = asyncio.ensure_future(asyncio.to_thread(lambda: Verdict.of(check())))
            self._running[key] = running
            running.add_done_callback(lambda done: self._finish(key, done))
        # shield: one caller going away does not cancel the check the others wait on
        return await asyncio.shield(running)

    def _finish(self, key: str, done: asyncio.Future[Verdict]) -> None:
        self._running.pop(key, None)
        if done.cancelled() or done.exception() is not None:
            return
        self._done[key] = done.result()
        while len(self._done) > self._size:
            self._done.popitem(last=False)

    def __len__(self) -> int:
        return len(self._done)
