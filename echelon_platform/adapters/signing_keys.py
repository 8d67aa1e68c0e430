"""The certificate signing key (Ed25519) and the published public keys, with rotation.

The active key is `ECHELON_SIGNING_KEY_FILE` (PEM, PKCS#8 private key) or, when unset, a key generated once
into `<data_dir>/signing/ed25519.pem` (mode 0600; logged). Rotating: point `ECHELON_SIGNING_KEY_FILE` at a
new key and list the old one in `ECHELON_SIGNING_RETIRED_KEY_FILES` (its private or public PEM): new
certificates carry the new key id, and the old public key stays published, so old certificates verify.
A key id is the SHA-256 fingerprint (hex) of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import structlog
from cachetools import TTLCache
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from echelon_platform.adapters.event_store import TRANSIENT_ERRORS, EventStore
from echelon_platform.adapters.key_files import publish_once
from echelon_platform.config import Settings
from echelon_platform.domain.certificate import signed_content
from echelon_platform.domain.values import CalibrationCertificate, CertificateSignature
from echelon_platform.errors import ConfigError, StoreError

log = structlog.get_logger(__name__)
ALGORITHM = "Ed25519"
GENERATED_KEY = Path("signing") / "ed25519.pem"


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class PublishedKey:
    key_id: str
    public_key: bytes
    not_before: datetime
    retired: bool

    def as_json(self) -> dict[str, object]:
        return {
            "key_id": self.key_id,
            "algorithm": ALGORITHM,
            "public_key": b64url(self.public_key),
            "not_before": self.not_before.isoformat().replace("+00:00", "Z"),
            "retired": self.retired,
        }


class Keyring:
    """The active private key (signs) and every published public key (verifies)."""

    def __init__(self, active: Ed25519PrivateKey, active_since: datetime, retired: list[PublishedKey]) -> None:
        self._active = active
        pub = active.public_key()
        self.key_id = key_id_of(pub)
        current = PublishedKey(self.key_id, raw_public(pub), active_since, retired=False)
        others = [k for k in retired if k.key_id != self.key_id]
        self.published: list[PublishedKey] = [current, *others]

    def sign(self, cert: CalibrationCertificate) -> CalibrationCertificate:
        """The certificate with its signature over the signed content (hash unchanged: it excludes both)."""
        value = self._active.sign(signed_content(cert.model_dump(mode="json")))
        return cert.model_copy(update={"signature": CertificateSignature(key_id=self.key_id, value=b64url(value))})

    def public_keys(self) -> dict[str, bytes]:
        return {k.key_id: k.public_key for k in self.published}

    def well_known(self) -> dict[str, object]:
        return {"keys": [k.as_json() for k in self.published]}


def load_keyring(settings: Settings) -> Keyring:
    """The keyring the settings name; generates the development key on first use. ConfigError if unreadable."""
    if settings.signing_key_file is not None:
        path = settings.signing_key_file
        active = _private_from(path)
    else:
        path = settings.data_dir.resolve() / GENERATED_KEY
        active = _generated(path)
    retired = [
        PublishedKey(key_id_of(pub), raw_public(pub), _mtime(p), retired=True)
        for p in settings.signing_retired_key_files
        for pub in [_public_from(p)]
    ]
    return Keyring(active, _mtime(path), retired)


def _generated(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        return _private_from(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    if not publish_once(path, pem):  # another role of this data dir generated it first: use that one
        return _private_from(path)
    log.warning(
        "signing.key_generated",
        path=str(path),
        key_id=key_id_of(key.public_key()),
        hint="set ECHELON_SIGNING_KEY_FILE to an operator-managed key in production",
    )
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"signing key file {path} is unreadable: {exc.strerror}") from exc


def _private_from(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"signing key file {path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key file {path} is not an Ed25519 key")
    return key


def _public_from(path: Path) -> Ed25519PublicKey:
    data = _read(path)
    if b"PRIVATE KEY" in data:
        return _private_from(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"retired key file {path} is not a PEM key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"retired key file {path} is not an Ed25519 key")
    return key


def _mtime(path: Path) -> datetime:
    try:
        return datetime.fromtimestamp(int(path.stat().st_mtime), tz=UTC)
    except OSError:
        return datetime.fromtimestamp(0, tz=UTC)


async def publish_keys(store: EventStore, keyring: Keyring) -> None:
    """Make the keyring's public keys known to every verifier (the certify stage does this at start)."""
    rows = [(k.key_id, k.public_key, k.not_before, k.retired) for k in keyring.published]
    try:
        async with store.pool.acquire() as conn, conn.transaction():
            if any(not k.retired for k in keyring.published):
                # A new active key retires the earlier ones: they stay published, for old certificates.
                await conn.execute("UPDATE signing_keys SET retired = true WHERE key_id <> $1", keyring.key_id)
            await conn.executemany(
                "INSERT INTO signing_keys (key_id, public_key, not_before, retired) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (key_id) DO UPDATE SET retired = excluded.retired",
                rows,
            )
    except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
        raise StoreError(f"cannot publish signing keys: {exc}") from exc


class PublishedKeys:
    """The public keys as the certify stage published them, cached briefly (read on every /verify)."""

    def __init__(self, store: EventStore, ttl_s: float = 10.0) -> None:
        self._store = store
        self._cache: TTLCache[str, list[PublishedKey]] = TTLCache(1, ttl_s)

    async def all(self) -> list[PublishedKey]:
        cached = self._cache.get("keys")
        if cached is not None:
            return cached
        try:
            rows = await self._store.pool.fetch(
                "SELECT key_id, public_key, not_before, retired FROM signing_keys ORDER BY retired, not_before DESC"
            )
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot read signing keys: {exc}") from exc
        keys = [PublishedKey(r["key_id"], bytes(r["public_key"]), r["not_before"], r["retired"]) for r in rows]
        self._cache["keys"] = keys
        return keys

    async def public_keys(self) -> dict[str, bytes]:
        return {k.key_id: k.public_key for k in await self.all()}

    async def well_known(self) -> dict[str, object]:
        return {"keys": [k.as_json() for k in await self.all()]}
