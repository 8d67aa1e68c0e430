"""Minting access tokens. Apart from api/auth.py so the CLI can mint one without loading wallet crypto."""

from __future__ import annotations

import time

import jwt


def issue_jwt(user_id: str, secret: str, *, admin: bool = False, ttl_s: int = 3600, algorithm: str = "HS256") -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl_s, "type": "access"}
    if admin:
        claims["role"] = "admin"
    return jwt.encode(claims, secret, algorithm=algorithm)
