"""Run secrets (GitHub tokens, oracle headers): encrypted, with a TTL, referenced — never in events.

Events carry only `secret_ref`; the value lives in Postgres (table `run_secrets`), Fernet-encrypted, and is
deleted when the run ends. Not in Redis: work in flight must carry on after the read models are lost.
"""

from __future__ import annotations

import base64
import hashlib

import asyncpg
import orjson
from cryptography.fernet import Fernet, InvalidToken
from pydantic import BaseModel, ConfigDict, SecretStr

from echelon_platform.adapters.event_store import TRANSIENT_ERRORS, EventStore
from echelon_platform.errors import ConfigError, StoreError


class RunSecrets(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    github_token: SecretStr | None = None
    oracle_headers: dict[str, SecretStr] = {}

    def is_empty(self) -> bool:
        return self.github_token is None and not self.oracle_headers


def fernet_for(secret_key: SecretStr | None, fallback: SecretStr) -> Fernet:
    if secret_key is not None:
        try:
            return Fernet(secret_key.get_secret_value().encode())
        except ValueError as exc:
            raise ConfigError("ECHELON_SECRET_KEY must be a Fernet key (32 url-safe base64 bytes)") from exc
    digest = hashlib.sha256(b"echelon-secrets:" + fallback.get_secret_value().encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


class SecretStore:
    def __init__(self, store: EventStore, fernet: Fernet, ttl_s: int) -> None:
        self._store = store
        self._fernet = fernet
        self._ttl_s = ttl_s

    async def put(self, ref: str, secrets: RunSecrets) -> None:
        plain = orjson.dumps(
            {
                "github_token": secrets.github_token.get_secret_value() if secrets.github_token else None,
                "oracle_headers": {k: v.get_secret_value() for k, v in secrets.oracle_headers.items()},
            }
        )
        await self._run(
            "INSERT INTO run_secrets (ref, ciphertext, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3)) "
            "ON CONFLICT (ref) DO UPDATE SET ciphertext = excluded.ciphertext, expires_at = excluded.expires_at",
            ref,
            self._fernet.encrypt(plain),
            float(self._ttl_s),
        )

    async def get(self, ref: str | None) -> RunSecrets:
        if ref is None:
            return RunSecrets()
        try:
            raw = await self._store.pool.fetchval(
                "SELECT ciphertext FROM run_secrets WHERE ref = $1 AND expires_at > now()", ref
            )
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot read run secrets: {exc}") from exc
        if raw is None:
            return RunSecrets()
        try:
            data = orjson.loads(self._fernet.decrypt(bytes(raw)))
        except InvalidToken as exc:
            raise ConfigError("run secrets cannot be decrypted: ECHELON_SECRET_KEY changed?") from exc
        return RunSecrets.model_validate(data)

    async def delete(self, refs: list[str]) -> None:
        """Forget the secrets of ended runs, and any that outlived their TTL."""
        await self._run("DELETE FROM run_secrets WHERE ref = ANY($1::text[]) OR expires_at < now()", refs)

    async def exists(self, ref: str) -> bool:
        try:
            return bool(await self._store.pool.fetchval("SELECT count(*) FROM run_secrets WHERE ref = $1", ref))
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot read run secrets: {exc}") from exc

    async def _run(self, query: str, *args: object) -> None:
        try:
            await self._store.pool.execute(query, *args)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot write run secrets: {exc}") from exc
