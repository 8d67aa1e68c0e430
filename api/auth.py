"""Authentication: Bearer JWT (HS256) or a signed wallet message. Routes depend on `get_user_or_wallet` only.

Both HTTP (api/deps.py) and the WebSocket stream call `authenticate`, so the rules live in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import jwt
import structlog
from cachetools import TLRUCache

from api.tokens import issue_jwt as issue_jwt  # re-exported: callers mint and check tokens here
from api.wallet import SiweBinding, WalletProof, verify_proof, wallet_user_id
from echelon_platform.adapters.nonce_store import NonceStore
from echelon_platform.config import Settings
from echelon_platform.domain.identity import (
    WALLET_SUBJECT_PREFIX,
    is_wallet_subject,
    signed_in_with_wallet,
    subject_problem,
)
from echelon_platform.errors import AuthError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    is_admin: bool = False
    # When the credential stops being valid (epoch seconds): a token's `exp`, a wallet message's
    # `Expiration Time`; None when it names none. Long-lived connections close at this time.
    expires_at: float | None = field(default=None, compare=False)

    def can_see(self, owner: str | None) -> bool:
        return self.is_admin or (owner is not None and owner == self.user_id)


def decode_jwt(token: str, secret: str, algorithm: str = "HS256") -> Principal:
    return _decode(token, secret, algorithm)[0]


def _decode(token: str, secret: str, algorithm: str) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(token, secret, algorithms=[algorithm], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired: sign in again") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    except (jwt.PyJWTError, ValueError, RecursionError) as exc:
        # A key PyJWT refuses (InvalidKeyError) is the server's to fix, never the caller's 500; the settings
        # refuse such a secret at start (check_api_exposure), this is the last line.
        log.error("api.jwt_unverifiable", error=type(exc).__name__)
        raise AuthError("invalid token: it cannot be verified") from exc
    if claims.get("type") == "refresh":
        raise AuthError("refresh tokens cannot be used to call the API; use an access token")
    sub = claims.get("sub")
    problem = subject_problem(sub)
    if problem is not None:
        raise AuthError(problem)
    assert isinstance(sub, str)
    if is_wallet_subject(sub) and not signed_in_with_wallet(claims):
        raise AuthError(
            f"invalid token: {WALLET_SUBJECT_PREFIX!r} user ids are reserved for wallet sign-in "
            "(POST /api/v1/auth/session); a token minted for one is not that wallet"
        )
    try:
        expires = float(claims["exp"])
    except (OverflowError, ValueError, TypeError) as exc:
        raise AuthError("invalid token: `exp` is not a usable time") from exc
    return Principal(user_id=sub, is_admin=claims.get("role") == "admin", expires_at=expires), expires


class TokenCache:
    """Verified access tokens by their exact text, until they expire.

    HS256 verification is a pure function of (token, secret, clock), so a repeat only needs the expiry
    check; this saves the decode on every request of a session. Failures are never cached."""

    def __init__(self, secret: str, algorithm: str = "HS256", maxsize: int = 10_000) -> None:
        self._secret = secret
        self._algorithm = algorithm
        # Each entry lives until its token's own `exp`.
        self._tokens: TLRUCache[str, tuple[Principal, float]] = TLRUCache(
            maxsize, ttu=lambda _key, value, _now: value[1], timer=time.time
        )

    def principal(self, token: str) -> Principal:
        hit = self._tokens.get(token)
        if hit is not None:
            return hit[0]
        principal, expires = _decode(token, self._secret, self._algorithm)
        self._tokens[token] = (principal, expires)
        return principal


async def authenticate_wallet(proof: WalletProof, settings: Settings, nonces: NonceStore) -> Principal:
    message = verify_proof(proof, datetime.now(UTC), SiweBinding.from_settings(settings), settings.wallet_max_age_s)
    # Consumed only after the signature checked out: a forger cannot burn someone else's nonce.
    await nonces.consume(message.nonce)
    admins = {a.lower() for a in settings.admin_wallets}
    expires = message.expiration_time.timestamp() if message.expiration_time is not None else None
    return Principal(
        user_id=wallet_user_id(message.address), is_admin=message.address.lower() in admins, expires_at=expires
    )


async def authenticate(
    settings: Settings,
    nonces: NonceStore,
    *,
    bearer: str | None,
    wallet: WalletProof | None,
    tokens: TokenCache | None = None,
) -> Principal:
    """A Bearer token wins when both are sent; with neither, AuthError (→ 401 + WWW-Authenticate)."""
    if bearer:
        if tokens is not None:
            return tokens.principal(bearer)
        return decode_jwt(bearer, settings.jwt_secret.get_secret_value(), settings.jwt_algorithm)
    if wallet is not None:
        return await authenticate_wallet(wallet, settings, nonces)
    raise AuthError(
        "missing credentials: send `Authorization: Bearer <token>` or the X-Wallet-Address, "
        "X-Wallet-Message and X-Wallet-Signature headers"
    )
