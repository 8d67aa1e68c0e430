"""Run secrets are encrypted with a key of their own (not the JWT secret's), and the key can be rotated."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.errors import ConfigError
from echelon_platform.ports.run_secrets import RunSecrets

SECRETS = RunSecrets(github_token=SecretStr("ghp_x"), oracle_headers={"Authorization": SecretStr("Bearer y")})


@asynccontextmanager
async def services_with(settings: Settings, **changes: object) -> AsyncIterator[Services]:
    async with Services(settings.model_copy(update=changes), name="test-secrets") as services:
        yield services


def token(services: RunSecrets) -> str | None:
    return services.github_token.get_secret_value() if services.github_token else None


async def test_the_secrets_key_does_not_depend_on_the_jwt_secret(settings: Settings) -> None:
    async with services_with(settings, jwt_secret=SecretStr("first-jwt-secret")) as before:
        await before.secrets.put("run-1", SECRETS)
    # The JWT secret is rotated: stored run secrets still decrypt (their key is a separate one)...
    async with services_with(settings, jwt_secret=SecretStr("rotated-jwt-secret")) as after:
        assert token(await after.secrets.get("run-1")) == "ghp_x"
    # ...kept in a generated key file, readable by its owner only.
    key_file = settings.data_dir.resolve() / "secrets" / "fernet.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    Fernet(key_file.read_bytes())  # a valid Fernet key


async def test_keys_rotate_first_encrypts_all_decrypt(settings: Settings) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    async with services_with(settings, secret_keys=[SecretStr(old)]) as services:
        await services.secrets.put("run-old", SECRETS)
    async with services_with(settings, secret_keys=[SecretStr(new), SecretStr(old)]) as services:
        assert token(await services.secrets.get("run-old")) == "ghp_x"  # the old key still decrypts
        await services.secrets.put("run-new", SECRETS)
    async with services_with(settings, secret_keys=[SecretStr(new)]) as services:
        assert token(await services.secrets.get("run-new")) == "ghp_x"  # the new key encrypted it
        with pytest.raises(ConfigError, match="not in ECHELON_SECRET_KEYS"):
            await services.secrets.get("run-old")  # retired key gone: refused, never garbage


def test_bad_or_ambiguous_keys_are_refused(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="Fernet keys"):
        Services(settings.model_copy(update={"secret_keys": [SecretStr("not-a-key")]}), name="x")
    key = SecretStr(Fernet.generate_key().decode())
    with pytest.raises(ConfigError, match="not both"):
        Services(settings.model_copy(update={"secret_keys": [key], "secret_key": key}), name="x")
