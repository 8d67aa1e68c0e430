"""The writer's retry decision and the API's 503 mapping, now named by the adapters."""

from __future__ import annotations

import asyncpg
import nats.errors
import redis.exceptions

from coordinator.retrying import transient
from echelon_platform.adapters.outages import UNTRANSLATED_OUTAGES
from echelon_platform.errors import ReadModelsStale, StoreError, StoreUnavailable


def _caused_by(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause
    return exc


def test_the_writer_retries_outages_of_redis_postgres_and_our_own_hierarchy() -> None:
    assert transient(redis.exceptions.ConnectionError("gone"))
    assert transient(redis.exceptions.TimeoutError("slow"))
    assert transient(asyncpg.CannotConnectNowError("starting"))
    assert transient(ConnectionResetError())
    assert transient(StoreUnavailable("append: dropped"))


def test_the_writer_does_not_retry_refused_values_lost_read_models_or_bugs() -> None:
    assert not transient(_caused_by(StoreError("append: bad"), asyncpg.DataError("bad value")))
    assert not transient(ReadModelsStale("gone"))
    assert not transient(redis.exceptions.ResponseError("WRONGTYPE"))
    assert not transient(ValueError("bug"))


def test_untranslated_redis_and_nats_failures_map_to_503() -> None:
    for exc in (redis.exceptions.ConnectionError(), redis.exceptions.TimeoutError(), nats.errors.NoServersError()):
        assert isinstance(exc, UNTRANSLATED_OUTAGES)
    assert not isinstance(redis.exceptions.ResponseError(), UNTRANSLATED_OUTAGES)
