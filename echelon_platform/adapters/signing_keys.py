"""The certificate signing key (Ed25519) and the published public keys, with rotation.

The active key is `ECHELON_SIGNING_KEY_FILE` (PEM, PKCS#8 private key) or, when unset, a key generated once
into `<data_dir>/signing/ed25519.pem` (mode 0600; logged). Rotating: point `ECHELON_SIGNING_KEY_FILE` at a
new key and list the old one in `ECHELON_SIGNING_RETIRED_KEY_FILES` (its *private* PEM, which endorses the
new key; other listed keys, public PEMs too, are endorsed by the active key): new certificates carry the
new key id, and the old public key stays published, so old certificates verify.
A key id is the SHA-256 fingerprint (hex) of the raw 32-byte public key.

Trust (domain/key_chain.py): verifiers serve and check only keys reachable from the root key through
endorsements. The root is `ECHELON_SIGNING_ROOT_KEY_ID`, else `<data_dir>/signing/root-key-id` (0600),
pinned by the first keyring loaded there (the then active key): never taken from the database, so a row
inserted into `signing_keys` publishes nothing.
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
from echelon_platform.domain.key_chain import Endorsement, endorsement_message, trusted_key_ids
from echelon_platform.domain.values import CalibrationCertificate, CertificateSignature
from echelon_platform.errors import ConfigError, StoreError

log = structlog.get_logger(__name__)
ALGORITHM = "Ed25519"
GENERATED_KEY = Path("signing") / "ed25519.pem"
ROOT_PIN = Path("signing") / "root-key-id"


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
    """The active private key (signs), every published public key (verifies) and their endorsements.

    The first retired key given as a private key (`predecessor`) endorses the active key; the active key
    endorses every retired key. `root_key_id`: the pinned root their chain must reach (None: unchecked)."""

    def __init__(
        self,
        active: Ed25519PrivateKey,
        active_since: datetime,
        retired: list[PublishedKey],
        *,
        predecessor: Ed25519PrivateKey | None = None,
        root_key_id: str | None = None,
    ) -> None:
        self._active = active
        pub = active.public_key()
        self.key_id = key_id_of(pub)
        self.root_key_id = root_key_id
        current = PublishedKey(self.key_id, raw_public(pub), active_since, retired=False)
        others = [k for k in retired if k.key_id != self.key_id]
        self.published: list[PublishedKey] = [current, *others]
        self.endorsements: list[Endorsement] = [_endorse(active, k.key_id) for k in others]
        if predecessor is not None and key_id_of(predecessor.public_key()) != self.key_id:
            self.endorsements.append(_endorse(predecessor, self.key_id))

    def sign(self, cert: CalibrationCertificate) -> CalibrationCertificate:
        """The certificate with its signature over the signed content (hash unchanged: it excludes both)."""
        value = self._active.sign(signed_content(cert.model_dump(mode="json")))
        return cert.model_copy(update={"signature": CertificateSignature(key_id=self.key_id, value=b64url(value))})

    def public_keys(self) -> dict[str, bytes]:
        return {k.key_id: k.public_key for k in self.published}

    def well_known(self) -> dict[str, object]:
        return well_known_document(self.published, self.endorsements)


def _endorse(endorser: Ed25519PrivateKey, key_id: str) -> Endorsement:
    return Endorsement(key_id, key_id_of(endorser.public_key()), endorser.sign(endorsement_message(key_id)))


def load_keyring(settings: Settings) -> Keyring:
    """The keyring the settings name; generates the development key, and pins the root of trust to the
    active key, on first use. ConfigError if unreadable."""
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
    predecessor = next(
        (_private_from(p) for p in settings.signing_retired_key_files if b"PRIVATE KEY" in _read(p)), None
    )
    root = root_key_id(settings) or _pin_root(settings, key_id_of(active.public_key()))
    return Keyring(active, _mtime(path), retired, predecessor=predecessor, root_key_id=root)


def root_key_id(settings: Settings) -> str | None:
    """The root of the signing key chain: the setting, else the pinned file; None when neither exists."""
    if settings.signing_root_key_id is not None:
        return settings.signing_root_key_id
    path = settings.data_dir.resolve() / ROOT_PIN
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"signing root pin {path} is unreadable: {exc.strerror}") from exc
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ConfigError(f"signing root pin {path} does not hold a key id (64 hex digits)")
    return text


def _pin_root(settings: Settings, key_id: str) -> str:
    path = settings.data_dir.resolve() / ROOT_PIN
    if publish_once(path, f"{key_id}\n".encode()):
        log.warning("signing.root_pinned", path=str(path), key_id=key_id)
        return key_id
    pinned = root_key_id(settings)  # another role of this data dir pinned it first
    if pinned is None:
        raise ConfigError(f"signing root pin {path} vanished")
    return pinned


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
    """Make the keyring's public keys and endorsements known to every verifier (the certify stage does this
    at start). ConfigError when the active key does not chain to the pinned root: its certificates would
    all verify as invalid."""
    rows = [(k.key_id, k.public_key, k.not_before, k.retired) for k in keyring.published]
    endorsements = [(e.key_id, e.endorsed_by, e.signature) for e in keyring.endorsements]
    try:
        async with store.pool.acquire() as conn, conn.transaction():
            if any(not k.retired for k in keyring.published):
                # A new active key retires the earlier ones: they stay published, for old certificates.
                await conn.execute("UPDATE signing_keys SET retired = true WHERE key_id <> $1", keyring.key_id)
            await conn.executemany(
                "INSERT INTO signing_keys (key_id, public_key, not_before, retired) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (key_id) DO UPDATE SET retired = excluded.retired, public_key = excluded.public_key",
                rows,
            )
            await conn.executemany(
                "INSERT INTO signing_key_endorsements (key_id, endorsed_by, signature) VALUES ($1, $2, $3) "
                "ON CONFLICT (key_id, endorsed_by) DO UPDATE SET signature = excluded.signature",
                endorsements,
            )
            keys, chain = await _read_keys(conn)
    except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
        raise StoreError(f"cannot publish signing keys: {exc}") from exc
    if keyring.root_key_id is not None:
        trusted = trusted_key_ids({k.key_id: k.public_key for k in keys}, chain, [keyring.root_key_id])
        if keyring.key_id not in trusted:
            raise ConfigError(
                f"signing key {keyring.key_id[:16]} does not chain to the root key {keyring.root_key_id[:16]}: "
                "list the key it succeeds (its private PEM) in ECHELON_SIGNING_RETIRED_KEY_FILES, "
                "or set ECHELON_SIGNING_ROOT_KEY_ID to a new root (every verifier must re-pin it)"
            )


async def _read_keys(conn: asyncpg.Connection | asyncpg.Pool) -> tuple[list[PublishedKey], list[Endorsement]]:
    rows = await conn.fetch(
        "SELECT key_id, public_key, not_before, retired FROM signing_keys ORDER BY retired, not_before DESC"
    )
    chain = await conn.fetch("SELECT key_id, endorsed_by, signature FROM signing_key_endorsements")
    keys = [PublishedKey(r["key_id"], bytes(r["public_key"]), r["not_before"], r["retired"]) for r in rows]
    return keys, [Endorsement(r["key_id"], r["endorsed_by"], bytes(r["signature"])) for r in chain]


class PublishedKeys:
    """The published public keys whose endorsement chain reaches the pinned root (settings: see
    `root_key_id`), cached briefly (read on every /verify). Rows without such a chain are left out, and
    logged: someone wrote to the table without a trusted private key."""

    def __init__(self, store: EventStore, settings: Settings, ttl_s: float = 10.0) -> None:
        self._store = store
        self._settings = settings
        self._cache: TTLCache[str, list[PublishedKey]] = TTLCache(1, ttl_s)
        self._endorsements: dict[str, list[Endorsement]] = {}
        self._reported: set[str] = set()

    async def all(self) -> list[PublishedKey]:
        """Only chain-verified keys, the active one first, retired ones after."""
        cached = self._cache.get("keys")
        if cached is not None:
            return cached
        try:
            listed, chain = await _read_keys(self._store.pool)
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot read signing keys: {exc}") from exc
        root = root_key_id(self._settings)  # read each time: the certify stage may pin it after we start
        trusted = trusted_key_ids({k.key_id: k.public_key for k in listed}, chain, [root] if root else [])
        keys = [k for k in listed if k.key_id in trusted]
        untrusted = {k.key_id for k in listed} - trusted
        if untrusted - self._reported:
            log.warning("signing.untrusted_keys_ignored", key_ids=sorted(untrusted), root_key_id=root)
            self._reported |= untrusted
        self._endorsements = {}
        for endorsement in chain:
            if endorsement.key_id in trusted and endorsement.endorsed_by in trusted:
                self._endorsements.setdefault(endorsement.key_id, []).append(endorsement)
        if root is not None:  # before the certify stage pins the root, look again on the next read
            self._cache["keys"] = keys
        return keys

    async def public_keys(self) -> dict[str, bytes]:
        return {k.key_id: k.public_key for k in await self.all()}

    async def well_known(self) -> dict[str, object]:
        keys = await self.all()
        return well_known_document(keys, [e for chain in self._endorsements.values() for e in chain])


def well_known_document(keys: list[PublishedKey], endorsements: list[Endorsement]) -> dict[str, object]:
    """`/.well-known/echelon-keys.json`: each key with the endorsements that chain it (a verifier that pinned
    an earlier key follows them to the new one)."""
    return {
        "keys": [
            {
                **k.as_json(),
                "endorsements": [
                    {"endorsed_by": e.endorsed_by, "signature": b64url(e.signature)}
                    for e in endorsements
                    if e.key_id == k.key_id
                ],
            }
            for k in keys
        ]
    }
