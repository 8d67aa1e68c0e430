"""Resource holders every process builds from Settings: bus, event store, read models, secrets."""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.event_store import EventStore
from echelon_platform.adapters.readmodel_store import ReadModels
from echelon_platform.adapters.secret_store import SecretStore, fernet_for
from echelon_platform.config import Settings
from echelon_platform.domain.events import Subjects
from echelon_platform.errors import ConfigError
from echelon_platform.metrics import Metrics


class Services:
    """Connects to NATS, Postgres and Redis on enter; closes them on exit. Nothing connects at import."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        metrics: Metrics | None = None,
        pool_size: int = 4,
        buffer_while_reconnecting: bool = True,
    ) -> None:
        """`buffer_while_reconnecting=False` for a process whose failed publish must never happen later."""
        if not settings.infra_configured():
            raise ConfigError("NATS_URL, DATABASE_URL and REDIS_URL must be set (or use `echelon stack up`)")
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.subjects = Subjects(settings.subject_root)
        self.bus = Bus(
            str(settings.nats_url),
            stream=settings.stream_name,
            subjects=self.subjects,
            duplicate_window_s=settings.duplicate_window_s,
            max_age_s=settings.stream_max_age_s,
            replicas=settings.stream_replicas,
            name=name,
            buffer_while_reconnecting=buffer_while_reconnecting,
        )
        self.store = EventStore(
            str(settings.database_url), max_size=pool_size, statement_timeout_s=settings.pg_statement_timeout_s
        )
        self.read_models = ReadModels(str(settings.redis_url), settings.redis_prefix)
        self.secrets = SecretStore(self.store, fernet_for(settings), settings.secret_ttl_s)
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.bus)
            await stack.enter_async_context(self.store)
            await stack.enter_async_context(self.read_models)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
