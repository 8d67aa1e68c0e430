"""Minting access tokens. Apart from api/auth.py so the CLI can mint one without loading wallet crypto."""

from __future__ import annotations

import time

import jwt

from echelon_platform.domain.identity import (
    SIGN_IN_METHODS_CLAIM,
    WALLET_SIGN_IN,
    WALLET_SUBJECT_PREFIX,
    is_wallet_subject,
)


def issue_jwt(
    user_id: str,
    secret: str,
    *,
    admin: bool = False,
    ttl_s: int = 3600,
    algorithm: str = "HS256",
    wallet_sign_in: bool = False,
) -> str:
    """An access token for `user_id`. `wallet_sign_in` only after a verified wallet proof: a `wallet:`
    subject needs it, and only a `wallet:` subject may carry it."""
    if is_wallet_subject(user_id) != wallet_sign_in:
        raise ValueError(f"the {WALLET_SUBJECT_PREFIX!r} user id prefix is reserved for wallet sign-in")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl_s, "type": "access"}
    if admin:
        claims["role"] = "admin"
    if wallet_sign_in:
        claims[SIGN_IN_METHODS_CLAIM] = [WALLET_SIGN_IN]
    return jwt.encode(claims, secret, algorithm=algorithm)
