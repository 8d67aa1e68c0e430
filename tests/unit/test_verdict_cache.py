"""`/verify` verdicts are computed once per certificate content and key set, shared by concurrent asks, bounded."""

from __future__ import annotations

import asyncio
import threading

import pytest

from api.verdict_cache import Verdict, VerdictCache, verdict_key
from echelon_platform.domain.cert_validity import Validity

VALID = Validity(None, True, True, True)
VERDICT = Verdict(hash_ok=True, aggregates_ok=True, signature_ok=True, key_id=None, valid=True)


async def test_one_check_per_document_shared_by_concurrent_requests() -> None:
    cache = VerdictCache(size=2)
    release = threading.Event()
    calls = []

    def check() -> Validity:
        calls.append(threading.current_thread().name)
        assert release.wait(10)
        return VALID

    key = verdict_key({"content_hash": "h1"}, {"k": b"\1" * 32})
    waiting = [asyncio.create_task(cache.verdict(key, check)) for _ in range(5)]
    await asyncio.sleep(0)  # let every request reach the cache before the check ends
    release.set()
    assert await asyncio.gather(*waiting) == [VERDICT] * 5
    assert len(calls) == 1 and calls[0] != threading.main_thread().name  # in a worker thread
    assert await cache.verdict(key, check) == VERDICT and len(calls) == 1 and cache.checks == 1


async def test_the_key_covers_the_document_and_the_keys_and_the_cache_is_bounded() -> None:
    doc = {"content_hash": "h1", "composite_score": 0.5}
    keys = {"k": b"\1" * 32}
    assert verdict_key(doc, keys) == verdict_key(dict(reversed(doc.items())), keys)
    assert verdict_key(doc, keys) != verdict_key({**doc, "composite_score": 0.99}, keys)  # same claimed hash
    assert verdict_key(doc, keys) != verdict_key(doc, {**keys, "k2": b"\2" * 32})  # a key retired or added
    cache = VerdictCache(size=2)
    for i in range(3):
        await cache.verdict(str(i), lambda: VALID)
    assert len(cache) == 2 and cache.checks == 3
    await cache.verdict("0", lambda: VALID)  # evicted (least recently used): checked again
    assert cache.checks == 4


async def test_a_failed_check_is_not_remembered() -> None:
    cache = VerdictCache()

    def broken() -> Validity:
        raise RuntimeError("store unreachable")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            await cache.verdict("k", broken)
    assert cache.checks == 2 and len(cache) == 0
