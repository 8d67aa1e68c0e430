"""Authentication: Bearer JWT (HS256). Routes depend on `get_user_or_wallet` only."""

from __future__ import annotations

from dataclasses import dataclass
import time

import jwt

from echelon_platform.errors import AuthError


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    is_admin: bool = False

    def can_see(self, owner: str | None) -> bool:
        return self.is_admin or (owner is not None and owner == self.user_id)


def decode_jwt(token: str, secret: str, algorithm: str = "HS256") -> Principal:
    try:
        claims = jwt.decode(token, secret, algorithms=[algorithm], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired: sign in again") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    if claims.get("type") == "refresh":
        raise AuthError("refresh tokens cannot be used to call the API; use an access token")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("token has no subject")
    return Principal(user_id=sub, is_admin=claims.get("role") == "admin")


def issue_jwt(user_id: str, secret: str, *, admin: bool = False, ttl_s: int = 3600, algorithm: str = "HS256") -> str:

    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl_s, "type": "access"}
    if admin:
        claims["role"] = "admin"
    return jwt.encode(claims, secret, algorithm=algorithm)
