"""NATS, Postgres and Redis servers run from Python wheels, for tests and local development."""

from echelon_platform.embedded._nats import EmbeddedNats
from echelon_platform.embedded._postgres import EmbeddedPostgres
from echelon_platform.embedded._process import EmbeddedServer, EmbeddedServerError, pid_alive
from echelon_platform.embedded._redis import EmbeddedRedis
from echelon_platform.embedded._stack import EmbeddedStack, StackUrls, create_database

__all__ = [
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
