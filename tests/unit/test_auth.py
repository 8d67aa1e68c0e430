"""JWT rules and wallet proofs with real keys and signatures (the single-use check is in the API tests)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from api.auth import decode_jwt, issue_jwt
from api.deps import decode_wallet_message, wallet_proof
from api.wallet import SiweBinding, WalletProof, parse_message, verify_proof, wallet_user_id
from echelon_platform.errors import AuthError

SECRET = "unit-test-secret-0123456789abcdef0123"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


BINDING = SiweBinding(domain="echelon.example", uri="https://echelon.example", chain_ids=frozenset({1}))


def siwe(address: str, issued: datetime = NOW, extra: str = "", domain: str = "echelon.example") -> str:
    return (
        f"{domain} wants you to sign in with your Ethereum account:\n{address}\n\n"
        "Sign in to echelon-verify.\n\nURI: https://echelon.example\nVersion: 1\nChain ID: 1\n"
        f"Nonce: a1b2c3d4e5f6\nIssued At: {issued.isoformat().replace('+00:00', 'Z')}{extra}"
    )


def proof(account: object, message: str, signer: object | None = None) -> WalletProof:
    signed = (signer or account).sign_message(encode_defunct(text=message))  # type: ignore[attr-defined]
    return WalletProof(address=account.address, message=message, signature=signed.signature.hex())  # type: ignore[attr-defined]


# ---- JWT ----


def test_access_tokens_give_the_subject_and_admin_role() -> None:
    assert decode_jwt(issue_jwt("alice", SECRET), SECRET).user_id == "alice"
    admin = decode_jwt(issue_jwt("root", SECRET, admin=True), SECRET)
    assert admin.is_admin and admin.can_see("anyone")
    alice = decode_jwt(issue_jwt("alice", SECRET), SECRET)
    assert alice.can_see("alice") and not alice.can_see("bob") and not alice.can_see(None)


@pytest.mark.parametrize(
    ("claims", "secret", "why"),
    [
        ({"sub": "a", "exp": NOW - timedelta(hours=1)}, SECRET, "expired"),
        ({"sub": "a", "exp": datetime.now(UTC) + timedelta(hours=1), "type": "refresh"}, SECRET, "refresh"),
        ({"sub": "a", "exp": datetime.now(UTC) + timedelta(hours=1)}, "x" * 40, "Signature verification failed"),
        ({"sub": "a"}, SECRET, 'missing the "exp" claim'),
        ({"exp": datetime.now(UTC) + timedelta(hours=1)}, SECRET, 'missing the "sub" claim'),
    ],
)
def test_bad_tokens_are_refused_saying_why(claims: dict[str, object], secret: str, why: str) -> None:
    with pytest.raises(AuthError, match=why):
        decode_jwt(jwt.encode(claims, secret), SECRET)


def test_unsigned_token_is_refused() -> None:
    token = jwt.encode({"sub": "root", "role": "admin", "exp": datetime.now(UTC) + timedelta(hours=1)}, "", "none")
    with pytest.raises(AuthError, match="invalid token"):
        decode_jwt(token, SECRET)


# ---- wallet (EIP-4361) ----


def test_a_real_signature_authenticates_the_checksummed_address() -> None:
    account = Account.create()
    message = siwe(account.address)
    lower = WalletProof(account.address.lower(), message, proof(account, message).signature)
    assert verify_proof(lower, NOW, BINDING).address == account.address
    assert wallet_user_id(account.address) == f"wallet:{account.address}"


def test_the_older_form_without_a_statement_and_all_optional_fields_parse() -> None:
    account = Account.create()
    message = (
        f"https://echelon.example wants you to sign in with your Ethereum account:\n{account.address}\n\n"
        "URI: https://echelon.example/login\nVersion: 1\nChain ID: 1\nNonce: a1b2c3d4e5f6\n"
        "Issued At: 2026-11-23T10:00:00.000Z\nExpiration Time: 2026-11-23T10:10:00Z\n"
        "Not Before: 2026-11-23T09:59:00+00:00\nRequest ID: req-1\nResources:\n- https://a.example/x\n- ipfs://b"
    )
    parsed = verify_proof(proof(account, message), NOW, BINDING)
    assert (parsed.scheme, parsed.statement, parsed.request_id) == ("https", None, "req-1")
    assert parsed.resources == ("https://a.example/x", "ipfs://b")
    assert parsed.expiration_time == NOW + timedelta(minutes=10)


def _replace(old: str, new: str) -> object:
    return lambda a, o: proof(a, siwe(a.address).replace(old, new))


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda a, o: proof(a, siwe(a.address), signer=o), "signed by another key"),
        (lambda a, o: proof(a, siwe(a.address, NOW - timedelta(minutes=5, seconds=1))), "stale"),
        (lambda a, o: proof(a, siwe(a.address, NOW + timedelta(minutes=2))), "in the future"),
        (lambda a, o: proof(a, siwe(o.address)), "different address"),
        (lambda a, o: proof(a, siwe(a.address, extra="\nExpiration Time: 2026-11-23T09:59:00Z")), "expired"),
        (lambda a, o: proof(a, siwe(a.address, extra="\nNot Before: 2026-11-23T10:05:00Z")), "not valid yet"),
        (lambda a, o: proof(a, siwe(a.address, domain="evil.example")), "another domain"),
        (_replace("URI: https://echelon.example", "URI: https://evil.example"), "another service"),
        (_replace("URI: https://echelon.example", "URI: http://echelon.example"), "another service"),
        (_replace("Chain ID: 1", "Chain ID: 5"), "Chain ID` 5 is not accepted"),
        (_replace("Version: 1", "Version: 2"), "Version"),
        (_replace("Nonce: a1b2c3d4e5f6", "Nonce: short"), "Nonce"),
        (_replace("\nVersion: 1", ""), "Version"),
        (_replace("Issued At: 2026-11-23T10:00:00Z", "Issued At: 2026-11-23T10:00:00"), "RFC 3339"),
        (_replace("Issued At: 2026-11-23T10:00:00Z", "Issued At: 2026-11-23"), "RFC 3339"),
        (lambda a, o: proof(a, siwe(a.address, extra="\nNote: trust me")), "unexpected text"),
        (lambda a, o: proof(a, siwe(a.address).replace(a.address, a.address.lower())), "EIP-55"),
        (lambda a, o: proof(a, f"Log in\nNonce: abcdef123456\nIssued At: {NOW.isoformat()}"), "not an EIP-4361"),
        (lambda a, o: WalletProof(a.address, siwe(a.address), "0x1234"), "65 bytes"),
        (lambda a, o: WalletProof(a.address, siwe(a.address), "zz" * 65), "hex"),
        (lambda a, o: WalletProof(a.address, siwe(a.address), "0x" + "00" * 65), "invalid"),
        (lambda a, o: WalletProof("0x1234", siwe(a.address), "0x" + "00" * 65), "not a valid Ethereum address"),
    ],
)
def test_forged_stale_foreign_or_malformed_proofs_are_refused(make: object, why: str) -> None:
    account, other = Account.create(), Account.create()
    with pytest.raises(AuthError, match=why):
        verify_proof(make(account, other), NOW, BINDING)  # type: ignore[operator]


def test_marketplace_login_text_with_nonce_and_issued_at_lines_is_refused() -> None:
    """The bug: any text with `Nonce:` and `Issued At:` lines used to authenticate."""
    account = Account.create()
    text = (
        f"Welcome to the marketplace!\nClick to sign in.\nAddress: {account.address}\n"
        f"Nonce: a1b2c3d4e5f6\nIssued At: {NOW.isoformat()}"
    )
    with pytest.raises(AuthError, match="not an EIP-4361"):
        verify_proof(proof(account, text), NOW, BINDING)


def test_tampering_with_a_signed_message_breaks_it() -> None:
    account = Account.create()
    genuine = proof(account, siwe(account.address))
    tampered = WalletProof(genuine.address, genuine.message.replace("Sign in", "Log in"), genuine.signature)
    with pytest.raises(AuthError, match=r"signed by another key|does not recover"):
        verify_proof(tampered, NOW, BINDING)


def test_message_fields() -> None:
    address = Account.create().address
    parsed = parse_message(siwe(address, extra="\nExpiration Time: 2026-11-23T10:10:00Z"))
    assert (parsed.domain, parsed.address, parsed.nonce, parsed.chain_id) == (
        "echelon.example",
        address,
        "a1b2c3d4e5f6",
        1,
    )
    assert parsed.issued_at == NOW and parsed.expiration_time == NOW + timedelta(minutes=10)
    assert parsed.statement == "Sign in to echelon-verify."


def test_the_binding_defaults_to_where_the_api_listens() -> None:
    from echelon_platform.config import Settings

    default = SiweBinding.from_settings(Settings(api_host="127.0.0.1", api_port=8000, siwe_uri=None, siwe_domain=None))
    assert (default.domain, default.uri, default.chain_ids) == ("127.0.0.1:8000", "http://127.0.0.1:8000", {1})
    public = SiweBinding.from_settings(Settings(siwe_uri="https://verify.example.com/", siwe_chain_ids=[1, 10]))
    assert (public.domain, public.uri, public.chain_ids) == (
        "verify.example.com",
        "https://verify.example.com",
        {1, 10},
    )


def test_headers_need_all_three_parts_and_base64() -> None:
    assert wallet_proof(None, None, None) is None
    with pytest.raises(AuthError, match="unsigned address"):
        wallet_proof("0xabc", None, None)
    with pytest.raises(AuthError, match="base64"):
        decode_wallet_message("not base64!")
    text = "line one\nline two"
    assert decode_wallet_message(base64.b64encode(text.encode()).decode()) == text


# ---- one encoding per identity and proof: EIP-55, low s, printable lines ----


def wrong_checksum(address: str) -> str:
    """The address with the case of its first letter flipped: the same 20 bytes, a wrong EIP-55 checksum."""
    i = next(i for i, c in enumerate(address) if i > 1 and c.isalpha())
    return address[:i] + address[i].swapcase() + address[i + 1 :]


def test_a_claimed_address_with_a_wrong_checksum_is_refused() -> None:
    """The bug: X-Wallet-Address with a wrong EIP-55 checksum was accepted (and named the checksummed wallet)."""
    account = Account.create()
    message = siwe(account.address)
    signature = proof(account, message).signature
    with pytest.raises(AuthError, match="wrong EIP-55 checksum"):
        verify_proof(WalletProof(wrong_checksum(account.address), message, signature), NOW, BINDING)
    upper = "0x" + account.address[2:].upper()
    if upper != account.address:
        with pytest.raises(AuthError, match="wrong EIP-55 checksum"):
            verify_proof(WalletProof(upper, message, signature), NOW, BINDING)
    # The exact EIP-55 form and all lower case (what wallets report) both still sign in.
    for claimed in (account.address, account.address.lower()):
        assert verify_proof(WalletProof(claimed, message, signature), NOW, BINDING).address == account.address


def high_s(signature: str) -> str:
    """The other valid encoding of an ECDSA signature: (r, n - s) with the recovery bit flipped."""
    raw = bytes.fromhex(signature.removeprefix("0x"))
    r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    flipped = 27 + ((v - 27) ^ 1) if v >= 27 else v ^ 1
    return "0x" + (r + (n - s).to_bytes(32, "big") + bytes([flipped])).hex()


def test_a_high_s_signature_is_refused() -> None:
    """The bug: the malleable twin (r, n - s) of a valid signature was accepted too."""
    account = Account.create()
    message = siwe(account.address)
    genuine = proof(account, message)
    twin = high_s(genuine.signature)
    # The twin really is a valid signature by the same key: only the low-s rule refuses it.
    assert Account.recover_message(encode_defunct(text=message), signature=bytes.fromhex(twin[2:])) == account.address
    with pytest.raises(AuthError, match="high s"):
        verify_proof(WalletProof(account.address, message, twin), NOW, BINDING)
    assert verify_proof(genuine, NOW, BINDING).address == account.address


@pytest.mark.parametrize(
    "extra",
    [
        "\nResources:\n- https://a.example/x\x1b[2K",
        "\nResources:\n- https://a.example/\x07",
        "\nResources:\n- https://a.example/\x85",
        "\nResources:\n- https://a.example/\u202eevil",
        "\nRequest ID: req\r",
    ],
)
def test_control_characters_on_any_line_are_refused(extra: str) -> None:
    """The bug: `Resources:` lines could carry control characters (terminal escapes, bidi overrides)."""
    account = Account.create()
    with pytest.raises(AuthError, match="control or non-ASCII"):
        verify_proof(proof(account, siwe(account.address, extra=extra)), NOW, BINDING)
    with pytest.raises(AuthError, match="control or non-ASCII"):
        parse_message(siwe(account.address).replace("Sign in to", "Sign\x00in to"))


# ---- hostile tokens and secrets: 401, never 500 ----


def _raw_token(payload: str, secret: str = SECRET) -> str:
    """A token whose payload JSON is exactly `payload` (PyJWT would not encode a lone surrogate)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    signing_input = f"{header}.{b64(payload.encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


LATER = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (f'{{"sub": "\\ud800", "exp": {LATER}}}', "not valid UTF-8"),
        (f'{{"sub": "alice\\nadmin", "exp": {LATER}}}', "control characters"),
        (f'{{"sub": "{"a" * 300}", "exp": {LATER}}}', "longer than 256"),
        (f'{{"sub": 7, "exp": {LATER}}}', "Subject must be a string"),
        ('{"sub": "alice", "exp": 1' + "0" * 400 + "}", "`exp` is not a usable time"),
    ],
)
def test_hostile_claims_are_refused_as_bad_credentials(payload: str, why: str) -> None:
    with pytest.raises(AuthError, match=why):
        decode_jwt(_raw_token(payload), SECRET)


def test_a_secret_pyjwt_refuses_is_a_401_not_a_crash() -> None:
    with pytest.raises(AuthError, match="cannot be verified"):
        decode_jwt(issue_jwt("alice", SECRET), "")


@pytest.mark.parametrize("sub", ["wallet:0x5B38Da6a701c568545dCfcB03FcB875f56beddC4", "WALLET:0xabc", "Wallet:x"])
def test_a_wallet_subject_without_wallet_sign_in_is_not_that_wallet(sub: str) -> None:
    forged = jwt.encode({"sub": sub, "exp": LATER}, SECRET)
    with pytest.raises(AuthError, match="reserved for wallet sign-in"):
        decode_jwt(forged, SECRET)
    with pytest.raises(ValueError, match="reserved for wallet sign-in"):
        issue_jwt(sub, SECRET)


def test_only_the_wallet_sign_in_mints_a_wallet_identity() -> None:
    sub = "wallet:0x5B38Da6a701c568545dCfcB03FcB875f56beddC4"
    assert decode_jwt(issue_jwt(sub, SECRET, wallet_sign_in=True), SECRET).user_id == sub
    with pytest.raises(ValueError, match="reserved for wallet sign-in"):
        issue_jwt("alice", SECRET, wallet_sign_in=True)  # the claim belongs to wallet subjects only
