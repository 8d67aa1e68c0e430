"""FastAPI dependencies: the process's resources (built in `lifespan`) and the caller's identity.

Every dependency is `async def` (FastAPI runs plain `def` ones in a thread pool) and the identity is one
dependency that reads the headers itself: each dependency node costs tens of µs per request. The
OpenAPI security schemes are declared in app.py instead (`SECURITY_SCHEMES`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from api.auth import Principal, TokenCache, authenticate
from api.options import ApiOptions
from api.publishing import Publisher
from api.sources import CertificateSource, RunSource
from api.wallet import WalletProof
from echelon_platform.adapters.api_keys import ApiKeys
from echelon_platform.adapters.readmodel_store import ReadModels
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.errors import AuthError
from echelon_platform.ports.log import LogReader

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "HTTPBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "JWT (HS256) with `sub` = user id, optional `role: admin`; refresh tokens are refused.",
    },
    "WalletAddress": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Wallet-Address",
        "description": (
            "Wallet auth, with X-Wallet-Message and X-Wallet-Signature: the Ethereum address (0x…), "
            "EIP-55 checksummed or all lower case."
        ),
    },
    "WalletMessage": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Wallet-Message",
        "description": (
            "Base64 (standard alphabet) of the exact UTF-8 text that was signed: an EIP-4361 "
            "Sign-In-with-Ethereum message naming this service's domain and URI, an accepted chain id and a "
            "nonce from GET /api/v1/auth/nonce. Issued at most 5 minutes ago; each nonce is accepted once."
        ),
    },
    "WalletSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Wallet-Signature",
        "description": "The EIP-191 personal_sign signature of the message: 65 bytes as 0x-prefixed hex.",
    },
}
# Bearer, or all three wallet headers together.
SECURITY_REQUIREMENT: list[dict[str, list[str]]] = [
    {"HTTPBearer": []},
    {"WalletAddress": [], "WalletMessage": [], "WalletSignature": []},
]


async def get_log_reader(request: Request) -> LogReader:
    services: Services = request.app.state.services
    return services.store


async def get_read_models(request: Request) -> ReadModels:
    services: Services = request.app.state.services
    return services.read_models


async def get_run_source(request: Request) -> RunSource:
    source: RunSource = request.app.state.run_source
    return source


async def get_certificate_source(request: Request) -> CertificateSource:
    source: CertificateSource = request.app.state.certificate_source
    return source


async def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


async def get_api_keys(request: Request) -> ApiKeys:
    api_keys: ApiKeys = request.app.state.api_keys
    return api_keys


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_options(request: Request) -> ApiOptions:
    options: ApiOptions = request.app.state.options
    return options


def decode_wallet_message(encoded: str) -> str:
    try:
        return base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise AuthError("X-Wallet-Message must be the base64 of the signed UTF-8 text") from exc


def wallet_proof(address: str | None, message: str | None, signature: str | None) -> WalletProof | None:
    """None when no wallet header is sent; AuthError when only some are (an address alone proves nothing)."""
    if not (address or message or signature):
        return None
    if not (address and message and signature):
        raise AuthError(
            "wallet auth needs all of X-Wallet-Address, X-Wallet-Message and X-Wallet-Signature; "
            "an unsigned address is not accepted"
        )
    return WalletProof(address=address, message=decode_wallet_message(message), signature=signature)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class UserOrWallet(SecurityBase):
    """The one authentication dependency of every protected route: a Bearer JWT or a signed wallet message.
    A Bearer token wins when both are sent; with neither, 401 with `WWW-Authenticate: Bearer`.

    A SecurityBase so FastAPI marks the routes that use it in the OpenAPI document (as HTTPBearer; app.py
    adds the wallet alternative); stateless, so one module-level instance is fine."""

    def __init__(self) -> None:
        self.model = HTTPBearerModel(description=SECURITY_SCHEMES["HTTPBearer"]["description"])
        self.scheme_name = "HTTPBearer"

    async def __call__(self, request: Request) -> Principal:
        state = request.app.state
        api_keys: ApiKeys = state.api_keys
        tokens: TokenCache = state.tokens
        headers = request.headers
        bearer = bearer_token(headers.get("authorization"))
        proof = None
        if bearer is None:
            proof = wallet_proof(
                headers.get("x-wallet-address"), headers.get("x-wallet-message"), headers.get("x-wallet-signature")
            )
        return await authenticate(
            state.settings,
            api_keys.nonces(state.settings.siwe_nonce_ttl_s),
            bearer=bearer,
            wallet=proof,
            tokens=tokens,
        )


get_user_or_wallet = UserOrWallet()


async def get_optional_user(request: Request) -> Principal | None:
    """The caller on public routes that show more to a signed-in user: None without credentials, and
    still 401 for credentials that are sent but invalid (a typo should not silently mean anonymous)."""
    headers = request.headers
    if not (
        headers.get("authorization")
        or headers.get("x-wallet-address")
        or headers.get("x-wallet-message")
        or headers.get("x-wallet-signature")
    ):
        return None
    return await get_user_or_wallet(request)


ApiKeysDep = Annotated[ApiKeys, Depends(get_api_keys)]
# Narrow: a route asks for just what it uses (the log, the read models, a run or certificate source, a publisher).
LogReaderDep = Annotated[LogReader, Depends(get_log_reader)]
ReadModelsDep = Annotated[ReadModels, Depends(get_read_models)]
RunSourceDep = Annotated[RunSource, Depends(get_run_source)]
CertificateSourceDep = Annotated[CertificateSource, Depends(get_certificate_source)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
OptionsDep = Annotated[ApiOptions, Depends(get_options)]
UserDep = Annotated[Principal, Depends(get_user_or_wallet)]
OptionalUserDep = Annotated[Principal | None, Depends(get_optional_user)]
