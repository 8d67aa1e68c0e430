"""Resource holders every process builds from Settings: bus, event store, read models, secrets."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

from echelon_platform.adapters.adaptive_limit import LimiterRegistry
from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.event_store import EventStore
from echelon_platform.adapters.readmodel_store import ReadModels
from echelon_platform.adapters.secret_store import SecretStore, fernet_for
from echelon_platform.config import Settings
from echelon_platform.domain.events import Subjects
from echelon_platform.domain.roles import Role
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
        role: Role | None = None,
    ) -> None:
        """`buffer_while_reconnecting=False` for a process whose failed publish must never happen later.
        `role` picks this connection's NATS user from the settings (see `nats_credentials`)."""
        if not settings.infra_configured():
            raise ConfigError("NATS_URL, DATABASE_URL and REDIS_URL must be set (or use `echelon stack up`)")
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.subjects = Subjects(settings.subject_root, settings.partitioning)
        self.role = role
        user, password = nats_credentials(settings, role)
        self.bus = Bus(
            str(settings.nats_url),
            stream=settings.stream_name,
            subjects=self.subjects,
            duplicate_window_s=settings.duplicate_window_s,
            max_age_s=settings.stream_max_age_s,
            replicas=settings.stream_replicas,
            name=name,
            buffer_while_reconnecting=buffer_while_reconnecting,
            user=user,
            password=password,
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

    def limiters(self, cap: int, initial: int | None = None) -> LimiterRegistry:
        """Adaptive limits shared through the read models' Redis by every process calling the same endpoint."""
        return LimiterRegistry(cap=cap, initial=initial, redis=self.read_models.redis, prefix=self.read_models.prefix)


def nats_credentials(settings: Settings, role: Role | None) -> tuple[str | None, str | None]:
    """The NATS user and password of `role`: from `nats_role_passwords`, else the credentials file, else
    the single-role `nats_user`/`nats_password`; (None, None) on a server without authentication."""
    if role is not None:
        inline = settings.nats_role_passwords.get(role.value)
        if inline is not None:
            return role.value, inline.get_secret_value()
        if settings.nats_credentials_file is not None:
            try:
                stored = json.loads(settings.nats_credentials_file.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read NATS credentials {settings.nats_credentials_file}: {exc}") from exc
            password = stored.get(role.value) if isinstance(stored, dict) else None
            if not isinstance(password, str):
                raise ConfigError(f"{settings.nats_credentials_file} has no password for the {role.value} role")
            return role.value, password
    if settings.nats_user is None:
        return None, None
    secret = settings.nats_password
    return settings.nats_user, secret.get_secret_value() if secret is not None else None
