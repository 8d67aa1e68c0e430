"""One exception hierarchy for the whole product.

    EchelonError
    ├── ConfigError            settings that cannot work (bad URL, missing key)
    ├── EnvelopeError          bytes that are not a valid event envelope / payload
    ├── RequestRejected        a request that is well-formed but not allowed (maps to 422)
    ├── NotFound               a run / certificate the caller cannot see (maps to 404)
    ├── AuthError              missing or bad credentials (maps to 401)
    ├── RateLimited            too many requests (maps to 429)
    ├── InfrastructureError    NATS / Postgres / Redis unreachable or failing
    │   ├── BusError
    │   ├── StoreError
    │   │   └── StoreUnavailable  transient: connection lost, statement cancelled (503 + Retry-After, retried)
    │   └── ReadModelError
    │       └── ReadModelsStale  read models lost or outdated: the writer rebuilds them from the log
    ├── MigrationError         a migration that cannot be applied (edited after applying, SQL error)
    ├── SetupMissing           the stream or a durable consumer is gone and this role may not create it:
    │                          the process exits non-zero until `echelon setup` (or `stack up`) re-creates it
    ├── WriterFenced           this writer's lease epoch is stale: another writer took over (never retried)
    └── StageError             a pipeline stage could not do its work for one run or replay
        ├── IngestError        ground truth could not be fetched (message says what to fix)
        ├── OracleError        the oracle timed out, failed or answered garbage
        ├── OracleRefused      the oracle target is not allowed (SSRF guard, allowlist)
        ├── ScoringError       the judge could not produce a valid score
        └── NotYetInLog        an event the stage needs is not in the log yet: wait and retry, never give up

Library errors (asyncpg, redis, nats, httpx) are translated at the adapter with ``raise ... from exc``;
HTTP mapping happens once, in the API's exception handler.
"""

from __future__ import annotations


class EchelonError(Exception):
    """Base of every error this product raises on purpose."""


class ConfigError(EchelonError):
    pass


class EnvelopeError(EchelonError):
    pass


class RequestRejected(EchelonError):
    pass


class NotFound(EchelonError):
    pass


class Forbidden(EchelonError):
    """Signed in, but not allowed (e.g. a construct_id another user owns): HTTP 403."""


class AuthError(EchelonError):
    pass


class RateLimited(EchelonError):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InfrastructureError(EchelonError):
    pass


class SetupMissing(EchelonError):
    """Not an InfrastructureError on purpose: retrying cannot help, so the role exits instead."""


class BusError(InfrastructureError):
    pass


class StoreError(InfrastructureError):
    pass


class StoreRefused(StoreError):
    """Postgres refused a value (a NUL character in JSON, say) or a constraint: the same write fails again."""


class StoreUnavailable(StoreError):
    """Postgres is unreachable, dropped the connection or cancelled the statement (a statement timeout behind a
    lock): transient. The one list of such database errors is `event_store.TRANSIENT_ERRORS`."""


class ReadModelError(InfrastructureError):
    pass


class ReadModelsStale(ReadModelError):
    """The read models lost their checkpoint or are of another generation: rebuild them from the log."""


class MigrationError(EchelonError):
    pass


class WriterFenced(EchelonError):
    """Not infrastructure trouble: retrying cannot help, the writer must stop and stand by."""


class StageError(EchelonError):
    pass


class IngestError(StageError):
    pass


class OracleError(StageError):
    pass


class OracleRefused(StageError):
    pass


class ScoringError(StageError):
    pass


class BudgetExceeded(ScoringError):
    """The run's `max_cost_usd` would be passed by the next judge request: it is not sent (no fallback judge
    is asked either: the budget is the run's, not a judge's)."""


class JudgesMixed(ScoringError):
    """`ECHELON_JUDGE_MIXING=refuse` and this replay would be judged by another judge than the run's others."""


class NotYetInLog(StageError):
    """The work depends on events the coordinator has not appended yet (it may be behind after a crash).

    The stage worker retries it with a delay and never dead-letters it: the watchdog ends a run that
    really is stuck.
    """


class EndpointBusy(NotYetInLog):
    """A provider endpoint's adaptive limit had no free slot for a long while: put the work back for later,
    without counting it as a failed attempt (nothing was sent)."""
