"""The API's own Redis keys beside the read models: rate limits, recent runs, sign-in nonces, and the lane
the hot routes pipeline their round trips on. On the read models' connection; the API asks this adapter
for them and never holds the Redis client itself."""

from __future__ import annotations

from echelon_platform.adapters.nonce_store import DEFAULT_MAX_OUTSTANDING, NonceStore
from echelon_platform.adapters.rate_limits import RateLimiter, RecentRuns
from echelon_platform.adapters.readmodel_store import ReadModels
from echelon_platform.adapters.redis_lane import RedisLane


class ApiKeys:
    def __init__(self, read_models: ReadModels) -> None:
        self._read_models = read_models

    def rate_limiter(self, *, limit: int, window_s: float = 60) -> RateLimiter:
        return RateLimiter(self._read_models.redis, self._read_models.prefix, limit=limit, window_s=window_s)

    def recent_runs(self) -> RecentRuns:
        return RecentRuns(self._read_models.redis, self._read_models.prefix)

    def nonces(self, ttl_s: int, *, max_outstanding: int = DEFAULT_MAX_OUTSTANDING) -> NonceStore:
        return NonceStore(self._read_models.redis, self._read_models.prefix, ttl_s, max_outstanding=max_outstanding)

    def lane(self) -> RedisLane:
        """A pipelined connection of its own (the caller closes it)."""
        return RedisLane(self._read_models.redis)
