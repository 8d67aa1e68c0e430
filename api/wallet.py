"""Wallet authentication: a fresh, signed, single-use message proves control of an Ethereum address.

The client signs a message with its key (EIP-191 `personal_sign`) and sends address, message and
signature. The message is either an EIP-4361 Sign-In-with-Ethereum message or any text with the same
`Nonce:` and `Issued At:` lines, e.g.::

    echelon-verify wants you to sign in with your Ethereum account:
    0x5B38Da6a701c568545dCfcB03FcB875f56beddC4

    Nonce: 8f3a9c21d0e44b7a
    Issued At: 2026-11-23T10:00:00Z

Checks, in this order: well-formed → fresh (issued ≤ `max_age_s` ago, not in the future beyond a small
clock skew, not past an `Expiration Time`) → the recovered signer is the claimed address → the message
was never used before. The last step (see `claim_key`) is done by the caller in Redis *after* the
signature is verified, so nobody can burn someone else's message with a forged signature.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import eth_keys.exceptions
import eth_utils.exceptions
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import is_address, to_checksum_address

from echelon_platform.errors import AuthError

MAX_MESSAGE_CHARS = 4000
DEFAULT_MAX_AGE_S = 300
CLOCK_SKEW_S = 30
WALLET_USER_PREFIX = "wallet:"

_SIWE_HEADER = re.compile(r"^(?P<domain>\S+) wants you to sign in with your Ethereum account:$")
_FIELD = re.compile(r"^(?P<key>[A-Za-z][A-Za-z ]*[A-Za-z]): (?P<value>.+)$")
_NONCE = re.compile(r"^[A-Za-z0-9]{8,128}$")


@dataclass(frozen=True, slots=True)
class WalletProof:
    """What the client sends: the address it claims, the exact signed text and the 65-byte signature."""

    address: str
    message: str
    signature: str


@dataclass(frozen=True, slots=True)
class SignedMessage:
    address: str | None  # the address named inside the message, when it names one
    domain: str | None
    nonce: str
    issued_at: datetime
    expires_at: datetime | None
    not_before: datetime | None


def wallet_user_id(checksum_address: str) -> str:
    return f"{WALLET_USER_PREFIX}{checksum_address}"


def checksum_address(address: str) -> str:
    """The EIP-55 form; a mixed-case address with a wrong checksum is refused (it is likely a typo)."""
    if not is_address(address):
        raise AuthError(f"wallet address {address[:64]!r} is not a valid Ethereum address")
    return str(to_checksum_address(address))


def _timestamp(key: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise AuthError(f"wallet message: `{key}` is not an ISO 8601 / RFC 3339 timestamp") from exc
    if parsed.tzinfo is None:
        raise AuthError(f"wallet message: `{key}` needs a time zone (e.g. a trailing Z)")
    return parsed.astimezone(UTC)


def parse_message(message: str) -> SignedMessage:
    """Read the fields wallet auth relies on; AuthError saying what is missing otherwise."""
    if not message or len(message) > MAX_MESSAGE_CHARS:
        raise AuthError(f"wallet message must be 1–{MAX_MESSAGE_CHARS} characters")
    lines = message.replace("\r\n", "\n").split("\n")
    domain = address = None
    header = _SIWE_HEADER.match(lines[0])
    if header is not None:
        domain = header["domain"]
        address = lines[1].strip() if len(lines) > 1 else ""
        if not address:
            raise AuthError("wallet message: the line after the Sign-In-with-Ethereum header must be the address")
    fields: dict[str, str] = {}
    for line in lines:
        match = _FIELD.match(line.strip())
        if match is not None:
            fields.setdefault(match["key"], match["value"].strip())
    address = address or fields.get("Address")
    nonce = fields.get("Nonce")
    if nonce is None or not _NONCE.match(nonce):
        raise AuthError("wallet message needs a `Nonce: <8+ letters or digits>` line")
    if "Issued At" not in fields:
        raise AuthError("wallet message needs an `Issued At: <RFC 3339 time>` line")
    return SignedMessage(
        address=address,
        domain=domain,
        nonce=nonce,
        issued_at=_timestamp("Issued At", fields["Issued At"]),
        expires_at=_timestamp("Expiration Time", fields["Expiration Time"]) if "Expiration Time" in fields else None,
        not_before=_timestamp("Not Before", fields["Not Before"]) if "Not Before" in fields else None,
    )


def check_fresh(parsed: SignedMessage, now: datetime, max_age_s: int = DEFAULT_MAX_AGE_S) -> None:
    age = (now - parsed.issued_at).total_seconds()
    if age > max_age_s:
        raise AuthError(f"wallet message is stale: issued {int(age)} s ago, the limit is {max_age_s} s; sign a new one")
    if age < -CLOCK_SKEW_S:
        raise AuthError("wallet message is issued in the future: check the client's clock")
    if parsed.expires_at is not None and parsed.expires_at <= now:
        raise AuthError("wallet message has expired (`Expiration Time` is past); sign a new one")
    if parsed.not_before is not None and parsed.not_before > now + timedelta(seconds=CLOCK_SKEW_S):
        raise AuthError("wallet message is not valid yet (`Not Before` is in the future)")


def _signature_bytes(signature: str) -> bytes:
    text = signature.strip().removeprefix("0x").removeprefix("0X")
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise AuthError("wallet signature must be hex (65 bytes, 0x-prefixed)") from exc
    if len(raw) != 65:
        raise AuthError(f"wallet signature must be 65 bytes, got {len(raw)}")
    return raw


def recover_signer(message: str, signature: str) -> str:
    """The checksummed address whose key signed `message` (EIP-191 personal_sign)."""
    raw = _signature_bytes(signature)
    try:
        return str(Account.recover_message(encode_defunct(text=message), signature=raw))
    except (eth_keys.exceptions.BadSignature, eth_utils.exceptions.ValidationError, ValueError) as exc:
        raise AuthError("wallet signature is invalid: it does not recover to any address") from exc


def verify_proof(proof: WalletProof, now: datetime, max_age_s: int = DEFAULT_MAX_AGE_S) -> str:
    """Everything except single use: returns the checksummed address the proof authenticates."""
    claimed = checksum_address(proof.address)
    parsed = parse_message(proof.message)
    if parsed.address is not None and parsed.address.lower() != claimed.lower():
        raise AuthError("wallet message names a different address than X-Wallet-Address")
    check_fresh(parsed, now, max_age_s)
    signer = recover_signer(proof.message, proof.signature)
    if signer != claimed:
        raise AuthError("wallet signature does not match the address: it was signed by another key")
    return claimed


def claim_key(redis_prefix: str, message: str) -> str:
    """The Redis key that marks a signed message as used (SET NX EX; auth state, not domain state)."""
    digest = hashlib.sha256(message.encode()).hexdigest()
    return f"{redis_prefix}auth:wallet:{digest}"


def claim_ttl_s(max_age_s: int = DEFAULT_MAX_AGE_S) -> int:
    """Remember a used message at least as long as it could still pass the freshness check."""
    return max_age_s + 2 * CLOCK_SKEW_S
