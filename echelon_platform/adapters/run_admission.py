"""POST /runs's only Redis round trip: the caller's rate limit, the recent-runs note of the admitted run and
the owner of its construct_id, in one Lua script (each part is the Lua function its own module defines)."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

import redis.exceptions

from echelon_platform.adapters.rate_limits import RECENT_NOTE_LUA, WINDOW_LUA, RateLimiter, RecentRuns
from echelon_platform.adapters.readmodel_store import CONSTRUCT_OWNER_LUA, OwnerReader
from echelon_platform.adapters.redis_lane import RedisLane
from echelon_platform.domain.ids import new_ulid
from echelon_platform.errors import ReadModelError

# Refused: {ms until a slot frees}. Admitted: {-1, the construct's owner or nil}; the run is noted as recent.
_ADMIT_RUN = (
    WINDOW_LUA
    + RECENT_NOTE_LUA
    + CONSTRUCT_OWNER_LUA
    + """
local wait = sliding_window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
if wait >= 0 then return {wait} end
note_recent(KEYS[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
return {-1, construct_owner(KEYS[3], unpack(ARGV, 9))}
"""
)


class RunAdmission:
    """Built once per app: everything it needs is per process."""

    def __init__(self, lane: RedisLane, limiter: RateLimiter, recent: RecentRuns, owners: OwnerReader) -> None:
        self._script = lane.script(_ADMIT_RUN)
        self.limiter = limiter
        self.recent = recent
        self._owners = owners

    def begin(
        self, user_id: str, run_id: str, created_at: datetime, construct_id: str
    ) -> Coroutine[Any, Any, str | None]:
        """The rate limit's `limiter.hit("runs", user_id)` and, when admitted, `recent.add(...)` of the run; the
        answer (awaited by the caller, which it must be) is the owner of `construct_id` (None: nobody certified
        it yet), or RateLimited when the window is full. The script is sent before the caller awaits it, so the
        caller can check the request meanwhile.

        Noted before the run is published, so the caller forgets it again if the run is not accepted; a note
        left behind anyway (the process died in between) only costs the list one stream lookup until it expires."""
        recent = self.recent
        keys = (self.limiter.key("runs", user_id), recent.key(user_id), self._owners.pointer)
        args = (
            self.limiter.limit,
            self.limiter.window_ms,
            new_ulid(),
            run_id,
            created_at.timestamp() * 1000,
            time.time() * 1000 - recent.ttl_s * 1000,
            recent.max_entries,
            recent.ttl_s,
            *self._owners.arguments(construct_id),
        )
        return self._answer(self._script.begin(keys, args))

    async def _answer(self, sent: Coroutine[Any, Any, Any]) -> str | None:
        try:
            reply = await sent
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"rate limiter unavailable: {exc}") from exc
        self.limiter.raise_if_full("runs", int(reply[0]))
        owner = reply[1] if len(reply) > 1 else None
        return owner.decode() if isinstance(owner, bytes) else owner
