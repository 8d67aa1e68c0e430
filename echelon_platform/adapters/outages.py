"""The library errors that mean a backing service is failing, so the roles can react to an outage (503,
retry) without importing nats, asyncpg or redis themselves."""

from __future__ import annotations

import asyncpg
import nats.errors
import redis.exceptions

from echelon_platform.adapters.event_store import TRANSIENT_ERRORS
from echelon_platform.errors import StoreError

# Raised by adapters that do not translate their library's errors yet: the API answers them 503, not 500.
UNTRANSLATED_OUTAGES: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    nats.errors.Error,
)

# Redis dropping or timing out, and every transient database failure: worth a retry with backoff.
_TRANSIENT: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    *TRANSIENT_ERRORS,
)


def is_transient(exc: BaseException) -> bool:
    """A library error from Redis or Postgres that passes once the server is back."""
    return isinstance(exc, _TRANSIENT)


def refused_value(exc: BaseException) -> bool:
    """A store error caused by a value Postgres refuses: retrying it would only fail again."""
    return isinstance(exc, StoreError) and isinstance(exc.__cause__, asyncpg.DataError)
