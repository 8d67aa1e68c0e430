"""Which signing keys to trust: the root, and every key a trusted key endorsed (signed its key id).

A key id is the SHA-256 fingerprint (hex) of the raw 32-byte Ed25519 public key. The root is pinned
outside wherever the keys are listed (a file or setting beside the verifier), so a list that gains a key
by someone writing to it alone gains nothing: the new key needs an endorsement by a trusted private key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_CONTEXT = b"echelon signing key endorsement v1\n"


@dataclass(frozen=True, slots=True)
class Endorsement:
    """`endorsed_by` vouches for `key_id`: its Ed25519 signature over `endorsement_message(key_id)`."""

    key_id: str
    endorsed_by: str
    signature: bytes


def fingerprint(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()


def endorsement_message(key_id: str) -> bytes:
    return _CONTEXT + key_id.encode("ascii")


def endorsement_ok(endorsement: Endorsement, endorser_raw: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(endorser_raw).verify(
            endorsement.signature, endorsement_message(endorsement.key_id)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def trusted_key_ids(keys: Mapping[str, bytes], endorsements: Iterable[Endorsement], roots: Iterable[str]) -> set[str]:
    """The ids in `keys` (id → raw public key) reachable from `roots` through valid endorsements.

    A key whose id is not its own fingerprint is never trusted (a row cannot borrow a trusted id)."""
    genuine = {key_id: raw for key_id, raw in keys.items() if len(raw) == 32 and fingerprint(raw) == key_id}
    by_endorser: dict[str, list[Endorsement]] = {}
    for endorsement in endorsements:
        by_endorser.setdefault(endorsement.endorsed_by, []).append(endorsement)
    trusted = {root for root in roots if root in genuine}
    frontier = list(trusted)
    while frontier:
        endorser = frontier.pop()
        for endorsement in by_endorser.get(endorser, []):
            key_id = endorsement.key_id
            if key_id in genuine and key_id not in trusted and endorsement_ok(endorsement, genuine[endorser]):
                trusted.add(key_id)
                frontier.append(key_id)
    return trusted
