"""NATS, Postgres and Redis servers run from Python wheels, for tests and local development."""

from echelon.embedded._nats import ClusterRoute, EmbeddedNats
from echelon.embedded._postgres import EmbeddedPostgres
from echelon.embedded._process import EmbeddedServer, EmbeddedServerError, pid_alive
from echelon.embedded._redis import EmbeddedRedis
from echelon.embedded._servers import EmbeddedStack, StackUrls, create_database

__all__ = [
    "ClusterRoute",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServer",
    "EmbeddedServerError",
    "EmbeddedStack",
    "StackUrls",
    "create_database",
    "pid_alive",
]
