"""Run secrets (GitHub tokens, oracle headers): encrypted, with a TTL, referenced — never in events.

Events carry only `secret_ref`; the value lives in Postgres (table `run_secrets`), Fernet-encrypted with a key
of its own (not derived from the JWT secret), and is deleted when the run ends or its TTL passes. Rotating:
put a new key first in ECHELON_SECRET_KEYS and keep the old one after it until ECHELON_SECRET_TTL_S passed.
Not in Redis: work in flight must carry on after the read models are lost.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import orjson
import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from echelon_platform.adapters.event_store import TRANSIENT_ERRORS, EventStore
from echelon_platform.adapters.key_files import publish_once
from echelon_platform.config import Settings
from echelon_platform.errors import ConfigError, StoreError
from echelon_platform.ports.run_secrets import RunSecrets

log = structlog.get_logger(__name__)
GENERATED_KEY = Path("secrets") / "fernet.key"


def fernet_for(settings: Settings) -> MultiFernet:
    """The run-secrets keys the settings name: the first encrypts, every one decrypts (rotation).

    Independent of the JWT secret, so a leaked token secret reveals no stored secret and either can be
    rotated alone. Unset: a key generated once into `<data_dir>/secrets/fernet.key` (mode 0600), shared by
    the roles of one data directory; roles on several hosts need ECHELON_SECRET_KEYS."""
    if settings.secret_keys and settings.secret_key is not None:
        raise ConfigError("set ECHELON_SECRET_KEYS or ECHELON_SECRET_KEY, not both")
    keys = [k.get_secret_value() for k in settings.secret_keys]
    if settings.secret_key is not None:
        keys = [settings.secret_key.get_secret_value()]
    if not keys:
        keys = [_generated(settings.data_dir.resolve() / GENERATED_KEY)]
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ConfigError("ECHELON_SECRET_KEYS must be Fernet keys (32 url-safe base64 bytes each)") from exc


def _generated(path: Path) -> str:
    if path.exists() or not publish_once(path, Fernet.generate_key()):
        return _read(path)  # another role of this data dir generated it first: use that one
    log.warning(
        "secrets.key_generated",
        path=str(path),
        hint="set ECHELON_SECRET_KEYS when roles run on several hosts (they must share the key)",
    )
    return _read(path)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"secrets key file {path} is unreadable: {exc.strerror}") from exc


class SecretStore:
    def __init__(self, store: EventStore, fernet: MultiFernet, ttl_s: int) -> None:
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
            raise ConfigError(
                "run secrets cannot be decrypted: the key that encrypted them is not in ECHELON_SECRET_KEYS"
            ) from exc
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
