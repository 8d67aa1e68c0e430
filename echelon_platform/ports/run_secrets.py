"""Run secrets (GitHub tokens, oracle headers): referenced by events, never in them. Implemented by
`adapters.secret_store.SecretStore` (encrypted in Postgres) and `adapters.memory.MemorySecrets`."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, SecretStr


class RunSecrets(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    github_token: SecretStr | None = None
    oracle_headers: dict[str, SecretStr] = {}

    def is_empty(self) -> bool:
        return self.github_token is None and not self.oracle_headers


class SecretReader(Protocol):
    """The stages' side: read a run's secrets (empty for `None`, or once they were forgotten)."""

    async def get(self, ref: str | None) -> RunSecrets: ...


class SecretKeeper(SecretReader, Protocol):
    """The API stores them, the writer forgets them when their run ends."""

    async def put(self, ref: str, secrets: RunSecrets) -> None: ...

    async def delete(self, refs: list[str]) -> None: ...
