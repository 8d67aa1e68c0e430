"""User ids: who a token or a wallet proof names. Pure and dependency-free (the CLI imports it at start).

A wallet user's id is `wallet:<EIP-55 address>`. That prefix is reserved for wallet sign-in: a Bearer
token naming a `wallet:` subject is accepted only with the claim that POST /api/v1/auth/session sets
after verifying the wallet's signature (`WALLET_SIGN_IN`), and `echelon token` refuses to mint one.
"""

from __future__ import annotations

WALLET_SUBJECT_PREFIX = "wallet:"
# The claim saying how a token's subject signed in (RFC 8176 "Authentication Methods References", a list),
# and the method a verified wallet proof (Sign-In with Ethereum) adds to it.
SIGN_IN_METHODS_CLAIM = "amr"
WALLET_SIGN_IN = "siwe"
MAX_SUBJECT_CHARS = 256


def is_wallet_subject(user_id: str) -> bool:
    """Whether `user_id` is in the reserved wallet namespace (compared case-insensitively, so `WALLET:`
    cannot pose as one either)."""
    return user_id[: len(WALLET_SUBJECT_PREFIX)].lower() == WALLET_SUBJECT_PREFIX


def subject_problem(user_id: object) -> str | None:
    """Why `user_id` cannot be a token's subject, or None: a non-empty string of at most
    MAX_SUBJECT_CHARS printable characters that encodes as UTF-8 (no lone surrogates)."""
    if not isinstance(user_id, str) or not user_id:
        return "token has no subject"
    if len(user_id) > MAX_SUBJECT_CHARS:
        return f"token subject is longer than {MAX_SUBJECT_CHARS} characters"
    try:
        user_id.encode("utf-8")
    except UnicodeEncodeError:
        return "token subject is not valid UTF-8 text"
    if not user_id.isprintable():
        return "token subject has control characters"
    return None


def signed_in_with_wallet(claims: dict[str, object]) -> bool:
    methods = claims.get(SIGN_IN_METHODS_CLAIM)
    return isinstance(methods, list) and WALLET_SIGN_IN in methods
