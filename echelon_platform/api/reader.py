"""Bulk reads of the Redis read models for read-time aggregates (stats), batched per round trip.

API-side on purpose: it only reads, through the key layout `readmodels.Keys` defines.
"""

from __future__ import annotations

from typing import Any

import orjson

from coordinator.projections import RunState, from_record
from echelon_platform.readmodels import DEFAULT_NAMESPACE, Keys, ReadModels, pointer_key

CHUNK = 1000  # keys per MGET / commands per pipeline: bounded replies, few round trips


# Resolve the namespace pointer and read the key in one round trip (the hot path of GET /runs/{id}).
_GET_IN_NAMESPACE = """
local ns = redis.call('GET', KEYS[1]) or ARGV[3]
return redis.call('GET', ARGV[1] .. ns .. ARGV[2])
"""
_NS_MARK = "\x00ns\x00"


class RunReader:
    """`ReadModels.get_run` in one Redis round trip instead of two; the key layout stays `Keys`'s."""

    def __init__(self, read_models: ReadModels) -> None:
        self._rm = read_models
        self._script = read_models.redis.register_script(_GET_IN_NAMESPACE)

    async def get(self, run_id: str) -> RunState | None:
        before, _, after = Keys(self._rm.prefix, _NS_MARK).run(run_id).partition(_NS_MARK)
        raw = await self._script(keys=[pointer_key(self._rm.prefix)], args=[before, after, DEFAULT_NAMESPACE])
        return from_record(orjson.loads(raw)) if raw else None


def _ids(members: Any) -> list[str]:
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


class BulkReader:
    def __init__(self, read_models: ReadModels) -> None:
        self._rm = read_models

    async def all_runs(self) -> list[RunState]:
        keys = await self._rm.keys()
        ids = _ids(await self._rm.redis.zrange(keys.runs, 0, -1))
        out: list[RunState] = []
        for start in range(0, len(ids), CHUNK):
            raws = await self._rm.redis.mget([keys.run(i) for i in ids[start : start + CHUNK]])
            out.extend(from_record(orjson.loads(raw)) for raw in raws if raw)
        return out

    async def all_certificates(self) -> list[dict[str, Any]]:
        keys = await self._rm.keys()
        ids = _ids(await self._rm.redis.zrange(keys.certs_by("created"), 0, -1))
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), CHUNK):
            raws = await self._rm.redis.mget([keys.cert(i) for i in ids[start : start + CHUNK]])
            out.extend(orjson.loads(raw) for raw in raws if raw)
        return out

    async def ratings_of(self, cert_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Latest rating per (replay, user) of each certificate."""
        keys = await self._rm.keys()
        out: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(cert_ids), CHUNK):
            chunk = cert_ids[start : start + CHUNK]
            pipe = self._rm.redis.pipeline(transaction=False)
            for cert_id in chunk:
                pipe.hvals(keys.ratings(cert_id))
            for cert_id, values in zip(chunk, await pipe.execute(), strict=True):
                out[cert_id] = [orjson.loads(v) for v in values]
        return out
