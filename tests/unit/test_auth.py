"""JWT rules and wallet proofs with real keys and signatures (the single-use check is in the API tests)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from api.auth import decode_jwt, issue_jwt
from api.deps import decode_wallet_message, wallet_proof
from api.wallet import (
    WalletProof,
    claim_key,
    parse_message,
    verify_proof,
    wallet_user_id,
)
from echelon_platform.errors import AuthError

SECRET = "unit-test-secret-0123456789abcdef0123"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def siwe(address: str, issued: datetime = NOW, extra: str = "") -> str:
    return (
        f"echelon.example wants you to sign in with your Ethereum account:\n{address}\n\n"
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


# ---- wallet ----


def test_a_real_signature_authenticates_the_checksummed_address() -> None:
    account = Account.create()
    lower = WalletProof(account.address.lower(), siwe(account.address), proof(account, siwe(account.address)).signature)
    assert verify_proof(lower, NOW) == account.address
    assert wallet_user_id(account.address) == f"wallet:{account.address}"
    plain = f"Log in\nNonce: abcdef123456\nIssued At: {NOW.isoformat()}"
    assert verify_proof(proof(account, plain), NOW + timedelta(minutes=4)) == account.address


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda a, o: proof(a, siwe(a.address), signer=o), "signed by another key"),
        (lambda a, o: proof(a, siwe(a.address, NOW - timedelta(minutes=5, seconds=1))), "stale"),
        (lambda a, o: proof(a, siwe(a.address, NOW + timedelta(minutes=2))), "in the future"),
        (lambda a, o: proof(a, siwe(o.address)), "different address"),
        (lambda a, o: proof(a, siwe(a.address, extra="\nExpiration Time: 2026-11-23T09:59:00Z")), "expired"),
        (lambda a, o: proof(a, siwe(a.address).replace("Nonce: a1b2c3d4e5f6", "Nonce: short")), "Nonce"),
        (lambda a, o: proof(a, "Nonce: abcdef123456"), "Issued At"),
        (lambda a, o: proof(a, siwe(a.address, extra="").replace("Z", "")), "time zone"),
        (lambda a, o: WalletProof(a.address, siwe(a.address), "0x1234"), "65 bytes"),
        (lambda a, o: WalletProof(a.address, siwe(a.address), "zz" * 65), "hex"),
        (lambda a, o: WalletProof(a.address, siwe(a.address), "0x" + "00" * 65), "invalid"),
        (lambda a, o: WalletProof("0x1234", siwe(a.address), "0x" + "00" * 65), "not a valid Ethereum address"),
    ],
)
def test_forged_stale_or_malformed_proofs_are_refused(make: object, why: str) -> None:
    account, other = Account.create(), Account.create()
    with pytest.raises(AuthError, match=why):
        verify_proof(make(account, other), NOW)  # type: ignore[operator]


def test_tampering_with_a_signed_message_breaks_it() -> None:
    account = Account.create()
    genuine = proof(account, siwe(account.address))
    tampered = WalletProof(genuine.address, genuine.message.replace("Chain ID: 1", "Chain ID: 2"), genuine.signature)
    with pytest.raises(AuthError, match=r"signed by another key|does not recover"):
        verify_proof(tampered, NOW)


def test_message_fields_and_single_use_key() -> None:
    parsed = parse_message(siwe("0xabc", extra="\nExpiration Time: 2026-11-23T10:10:00Z"))
    assert (parsed.domain, parsed.address, parsed.nonce) == ("echelon.example", "0xabc", "a1b2c3d4e5f6")
    assert parsed.issued_at == NOW and parsed.expires_at == NOW + timedelta(minutes=10)
    assert claim_key("p:", "m") == claim_key("p:", "m") != claim_key("p:", "m2")
    assert claim_key("p:", "m").startswith("p:auth:wallet:")


def test_headers_need_all_three_parts_and_base64() -> None:
    assert wallet_proof(None, None, None) is None
    with pytest.raises(AuthError, match="unsigned address"):
        wallet_proof("0xabc", None, None)
    with pytest.raises(AuthError, match="base64"):
        decode_wallet_message("not base64!")
    text = "line one\nline two"
    assert decode_wallet_message(base64.b64encode(text.encode()).decode()) == text
