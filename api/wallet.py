"""Sign-In with Ethereum (EIP-4361): a fresh, signed message bound to this service proves control of an address.

The client fetches a nonce (`GET /api/v1/auth/nonce`), signs an EIP-4361 message with its key (EIP-191
`personal_sign`) and sends address, message and signature::

    127.0.0.1:8000 wants you to sign in with your Ethereum account:
    0x5B38Da6a701c568545dCfcB03FcB875f56beddC4

    Sign in to echelon-verify.

    URI: http://127.0.0.1:8000
    Version: 1
    Chain ID: 1
    Nonce: 8f3a9c21d0e44b7a8f3a9c21d0e44b7a
    Issued At: 2026-11-23T10:00:00Z

The text must follow the EIP-4361 grammar line by line (fields in order, nothing else); free text that
merely contains `Nonce:` and `Issued At:` lines is refused. Checks, in this order: well-formed → bound to
this service (domain, URI origin, chain id; see `SiweBinding`) → fresh (issued ≤ `max_age_s` ago, not in
the future beyond a small clock skew, `Expiration Time` not past, `Not Before` reached) → the recovered
signer is the message's address. The nonce is consumed by the caller (api/auth.py) *after* the signature
is verified, so nobody can burn someone else's nonce with a forged signature.

The `siwe` package is not used: it pins an older eth-account and pulls in web3 for contract wallets
(EIP-1271), which this service does not accept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import eth_keys.exceptions
import eth_utils.exceptions
from eth_utils.address import is_address, to_checksum_address

from echelon_platform.config import Settings
from echelon_platform.errors import AuthError
from echelon_platform.recursion import recursion_limit_kept

with recursion_limit_kept():  # py_ecc, loaded by eth_account, raises the limit to 100,000 on import
    from eth_account import Account
    from eth_account.messages import encode_defunct

MAX_MESSAGE_CHARS = 4000
DEFAULT_MAX_AGE_S = 300
CLOCK_SKEW_S = 30
WALLET_USER_PREFIX = "wallet:"
HEADER_SUFFIX = " wants you to sign in with your Ethereum account:"

_HEADER = re.compile(
    r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?(?P<domain>[^\s/?#@]+)" + re.escape(HEADER_SUFFIX) + "$"
)
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_NONCE = re.compile(r"^[A-Za-z0-9]{8,128}$")
_CHAIN_ID = re.compile(r"^[1-9][0-9]{0,18}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$")
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")
# EIP-4361's grammar is ASCII throughout (authority, address, statement, URIs, dates): a line with anything
# but printable ASCII (control characters, C1, bidirectional overrides) could show the signer other text.
_MESSAGE_LINE = re.compile(r"^[\x20-\x7e]*$")
# secp256k1's group order: a signature (r, s) and (r, n - s) both verify; only the low one (s <= n/2, as
# EIP-2 requires of transactions) is accepted, so a proof has exactly one valid encoding.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True, slots=True)
class WalletProof:
    """What the client sends: the address it claims, the exact signed text and the 65-byte signature."""

    address: str
    message: str
    signature: str


@dataclass(frozen=True, slots=True)
class SiweMessage:
    """The fields of an EIP-4361 message, as signed."""

    scheme: str | None
    domain: str
    address: str
    statement: str | None
    uri: str
    version: str
    chain_id: int
    nonce: str
    issued_at: datetime
    expiration_time: datetime | None = None
    not_before: datetime | None = None
    request_id: str | None = None
    resources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SiweBinding:
    """What a message must name to sign in here: this service's domain and URI origin, an allowed chain."""

    domain: str
    uri: str
    chain_ids: frozenset[int]

    @classmethod
    def from_settings(cls, settings: Settings) -> SiweBinding:
        return cls(settings.siwe_expected_domain(), settings.siwe_expected_uri(), frozenset(settings.siwe_chain_ids))


def wallet_user_id(checksum_address: str) -> str:
    return f"{WALLET_USER_PREFIX}{checksum_address}"


def checksum_address(address: str) -> str:
    """The EIP-55 form of a claimed address. Accepted: the exact EIP-55 form, or all lower case (what wallets
    report, carrying no checksum); any other mixed case must be the checksum, else it is refused (a typo or a
    lookalike), as is all upper case. The message itself must carry the EIP-55 form (EIP-4361)."""
    if not _ADDRESS.match(address) or not is_address(address):
        raise AuthError(f"wallet address {address[:64]!r} is not a valid Ethereum address")
    checksummed = str(to_checksum_address(address))
    if address not in (checksummed, "0x" + address[2:].lower()):
        raise AuthError(
            f"wallet address {address} has a wrong EIP-55 checksum (expected {checksummed}); "
            "send it exactly as EIP-55 or in lower case"
        )
    return checksummed


def _timestamp(key: str, value: str) -> datetime:
    if not _RFC3339.match(value):
        raise AuthError(f"wallet message: `{key}` must be an RFC 3339 date-time with a time zone (e.g. a trailing Z)")
    try:
        return datetime.fromisoformat(value.upper()).astimezone(UTC)
    except ValueError as exc:
        raise AuthError(f"wallet message: `{key}` is not a valid date-time") from exc


def _origin(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}".lower()


class _Lines:
    """The field lines after the header, read strictly in EIP-4361 order."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.pos = 0

    def take(self, prefix: str, *, required: bool) -> str | None:
        if self.pos < len(self.lines) and self.lines[self.pos].startswith(prefix):
            self.pos += 1
            return self.lines[self.pos - 1][len(prefix) :]
        if required:
            raise AuthError(f"wallet message: expected a `{prefix}…` line here (EIP-4361 field order)")
        return None

    def rest(self) -> list[str]:
        rest, self.pos = self.lines[self.pos :], len(self.lines)
        return rest


def _statement(lines: list[str]) -> tuple[str | None, int]:
    """(statement, index of the first field line); the blank lines around the statement are part of the grammar."""
    if len(lines) < 4 or lines[2] != "":
        raise AuthError("wallet message: the address line must be followed by a blank line (EIP-4361)")
    if lines[3] == "":
        return None, 4
    if lines[3].startswith("URI: "):  # the older form without a statement has one blank line, not two
        return None, 3
    if len(lines) < 5 or lines[4] != "" or not _PRINTABLE.match(lines[3]):
        raise AuthError("wallet message: the statement must be one line followed by a blank line (EIP-4361)")
    return lines[3], 5


def parse_message(message: str) -> SiweMessage:
    """Parse an EIP-4361 message strictly; AuthError saying what does not fit the grammar."""
    if not message or len(message) > MAX_MESSAGE_CHARS:
        raise AuthError(f"wallet message must be 1–{MAX_MESSAGE_CHARS} characters")
    lines = message.split("\n")
    for number, line in enumerate(lines, 1):
        if not _MESSAGE_LINE.match(line):
            raise AuthError(
                f"wallet message: line {number} has a control or non-ASCII character (EIP-4361 messages are "
                "printable ASCII, one field per line)"
            )
    header = _HEADER.match(lines[0])
    if header is None:
        raise AuthError(
            "wallet message is not an EIP-4361 Sign-In with Ethereum message: the first line must be "
            f"`<domain>{HEADER_SUFFIX}`"
        )
    address = lines[1] if len(lines) > 1 else ""
    if not _ADDRESS.match(address) or to_checksum_address(address) != address:
        raise AuthError("wallet message: the second line must be the EIP-55 checksummed address")
    statement, first_field = _statement(lines)
    fields = _Lines(lines[first_field:])
    uri = str(fields.take("URI: ", required=True))
    version = str(fields.take("Version: ", required=True))
    chain_id = str(fields.take("Chain ID: ", required=True))
    nonce = str(fields.take("Nonce: ", required=True))
    issued_at = _timestamp("Issued At", str(fields.take("Issued At: ", required=True)))
    expiration = fields.take("Expiration Time: ", required=False)
    not_before = fields.take("Not Before: ", required=False)
    request_id = fields.take("Request ID: ", required=False)
    resources: list[str] = []
    if fields.take("Resources:", required=False) == "":
        for line in fields.rest():
            if not line.startswith("- ") or not urlsplit(line[2:]).scheme:
                raise AuthError("wallet message: each resource must be a `- <URI>` line")
            resources.append(line[2:])
    if fields.rest():
        raise AuthError("wallet message: unexpected text after the EIP-4361 fields")
    if not urlsplit(uri).scheme or not _PRINTABLE.match(uri):
        raise AuthError("wallet message: `URI` must be an absolute URI")
    if version != "1":
        raise AuthError("wallet message: `Version` must be 1")
    if not _CHAIN_ID.match(chain_id):
        raise AuthError("wallet message: `Chain ID` must be a positive integer")
    if not _NONCE.match(nonce):
        raise AuthError("wallet message: `Nonce` must be 8–128 letters or digits")
    if request_id is not None and not _PRINTABLE.match(request_id):
        raise AuthError("wallet message: `Request ID` has control characters")
    return SiweMessage(
        scheme=header["scheme"],
        domain=header["domain"],
        address=address,
        statement=statement,
        uri=uri,
        version=version,
        chain_id=int(chain_id),
        nonce=nonce,
        issued_at=issued_at,
        expiration_time=_timestamp("Expiration Time", expiration) if expiration is not None else None,
        not_before=_timestamp("Not Before", not_before) if not_before is not None else None,
        request_id=request_id,
        resources=tuple(resources),
    )


def check_binding(parsed: SiweMessage, binding: SiweBinding) -> None:
    """The message was written for this service: a signature collected by another site does not sign in here."""
    if parsed.domain.lower() != binding.domain.lower():
        raise AuthError(f"wallet message is for another domain ({parsed.domain[:64]}); sign one for {binding.domain}")
    expected_origin = _origin(binding.uri)
    if parsed.scheme is not None and parsed.scheme.lower() != expected_origin.split("://", 1)[0]:
        raise AuthError("wallet message names another scheme than this service's URI")
    if _origin(parsed.uri) != expected_origin:
        raise AuthError(f"wallet message `URI` is for another service; expected {binding.uri}")
    if parsed.chain_id not in binding.chain_ids:
        allowed = ", ".join(str(c) for c in sorted(binding.chain_ids))
        raise AuthError(f"wallet message `Chain ID` {parsed.chain_id} is not accepted here (allowed: {allowed})")


def check_fresh(parsed: SiweMessage, now: datetime, max_age_s: int = DEFAULT_MAX_AGE_S) -> None:
    age = (now - parsed.issued_at).total_seconds()
    if age > max_age_s:
        raise AuthError(f"wallet message is stale: issued {int(age)} s ago, the limit is {max_age_s} s; sign a new one")
    if age < -CLOCK_SKEW_S:
        raise AuthError("wallet message is issued in the future: check the client's clock")
    if parsed.expiration_time is not None and parsed.expiration_time <= now:
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
    if int.from_bytes(raw[32:64], "big") > SECP256K1_N // 2:
        raise AuthError("wallet signature has a high s value: sign again (wallets produce low-s signatures)")
    return raw


def recover_signer(message: str, signature: str) -> str:
    """The checksummed address whose key signed `message` (EIP-191 personal_sign)."""
    raw = _signature_bytes(signature)
    try:
        return str(Account.recover_message(encode_defunct(text=message), signature=raw))
    except (eth_keys.exceptions.BadSignature, eth_utils.exceptions.ValidationError, ValueError) as exc:
        raise AuthError("wallet signature is invalid: it does not recover to any address") from exc


def verify_proof(
    proof: WalletProof, now: datetime, binding: SiweBinding, max_age_s: int = DEFAULT_MAX_AGE_S
) -> SiweMessage:
    """Everything except the nonce's single use: returns the verified message (its address is the signer)."""
    claimed = checksum_address(proof.address)
    parsed = parse_message(proof.message)
    if parsed.address != claimed:
        raise AuthError("wallet message names a different address than X-Wallet-Address")
    check_binding(parsed, binding)
    check_fresh(parsed, now, max_age_s)
    signer = recover_signer(proof.message, proof.signature)
    if signer != claimed:
        raise AuthError("wallet signature does not match the address: it was signed by another key")
    return parsed
