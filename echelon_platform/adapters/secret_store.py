"""Run secrets (GitHub tokens, oracle headers): encrypted, with a TTL, referenced — never in events.

Events carry only `secret_ref`; the value lives here, Fernet-encrypted, and is deleted when the run ends.
"""

from __future__ import annotations

import base64
import hashlib

import orjson
from cryptography.fernet import Fernet, InvalidToken
from pydantic import BaseModel, ConfigDict, SecretStr

from echelon_platform.adapters.readmodel_store import RedisClient
from echelon_platform.errors import ConfigError


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


def secret_prefix(redis_prefix: str) -> str:
    return f"{redis_prefix}secret:"


class SecretStore:
    def __init__(self, client: RedisClient, fernet: Fernet, ttl_s: int) -> None:
        self._client = client
        self._fernet = fernet
        self._ttl_s = ttl_s
        self.prefix = secret_prefix(client.prefix)

    async def put(self, ref: str, secrets: RunSecrets) -> None:
        plain = orjson.dumps(
            {
                "github_token": secrets.github_token.get_secret_value() if secrets.github_token else None,
                "oracle_headers": {k: v.get_secret_value() for k, v in secrets.oracle_headers.items()},
            }
        )
        await self._client.redis.set(self.prefix + ref, self._fernet.encrypt(plain), ex=self._ttl_s)

    async def get(self, ref: str | None) -> RunSecrets:
        if ref is None:
            return RunSecrets()
        raw = await self._client.redis.get(self.prefix + ref)
        if raw is None:
            return RunSecrets()
        try:
            data = orjson.loads(self._fernet.decrypt(raw))
        except InvalidToken as exc:
            raise ConfigError("run secrets cannot be decrypted: ECHELON_SECRET_KEY changed?") from exc
        return RunSecrets.model_validate(data)
