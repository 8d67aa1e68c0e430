"""HS256 access tokens minted with the standard library, for the CLI.

The same claims as `api.tokens.issue_jwt` (a test decodes one with PyJWT and the API's own check), without
importing PyJWT, which loads `cryptography` and alone costs about 0.2 s of every `echelon token` and
`echelon verify` start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from echelon_platform.domain.identity import WALLET_SUBJECT_PREFIX, is_wallet_subject


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_hs256(user_id: str, secret: str, *, admin: bool = False, ttl_s: int = 3600) -> str:
    if is_wallet_subject(user_id):  # the API would refuse it: a wallet user signs in with the wallet
        raise ValueError(
            f"user ids starting with {WALLET_SUBJECT_PREFIX!r} are reserved for wallet sign-in "
            "(POST /api/v1/auth/session); choose another user id"
        )
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl_s, "type": "access"}
    if admin:
        claims["role"] = "admin"
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode("ascii")
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"
