"""FastAPI dependencies: the process's resources (built in `lifespan`) and the caller's identity."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from echelon_platform.api.options import ApiOptions
from echelon_platform.auth import Principal, authenticate
from echelon_platform.config import Settings
from echelon_platform.errors import AuthError
from echelon_platform.services import Services
from echelon_platform.wallet import WalletProof

_bearer = HTTPBearer(
    auto_error=False,
    description="JWT (HS256) with `sub` = user id, optional `role: admin`; refresh tokens are refused.",
)
_wallet_address = APIKeyHeader(
    name="X-Wallet-Address",
    scheme_name="WalletAddress",
    auto_error=False,
    description="Wallet auth, with X-Wallet-Message and X-Wallet-Signature: the Ethereum address (0x…).",
)
_wallet_message = APIKeyHeader(
    name="X-Wallet-Message",
    scheme_name="WalletMessage",
    auto_error=False,
    description=(
        "Base64 (standard alphabet) of the exact UTF-8 text that was signed: an EIP-4361 "
        "Sign-In-with-Ethereum message, or any text with `Nonce: <8+ alphanumerics>` and "
        "`Issued At: <RFC 3339>` lines. Issued at most 5 minutes ago; each message is accepted once."
    ),
)
_wallet_signature = APIKeyHeader(
    name="X-Wallet-Signature",
    scheme_name="WalletSignature",
    auto_error=False,
    description="The EIP-191 personal_sign signature of the message: 65 bytes as 0x-prefixed hex.",
)
WALLET_SCHEMES = ("WalletAddress", "WalletMessage", "WalletSignature")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def decode_wallet_message(encoded: str) -> str:
    try:
        return base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise AuthError("X-Wallet-Message must be the base64 of the signed UTF-8 text") from exc


def wallet_proof(address: str | None, message: str | None, signature: str | None) -> WalletProof | None:
    """None when no wallet header is sent; AuthError when only some are (an address alone proves nothing)."""
    sent = (address, message, signature)
    if not any(sent):
        return None
    if not all(sent):
        raise AuthError(
            "wallet auth needs all of X-Wallet-Address, X-Wallet-Message and X-Wallet-Signature; "
            "an unsigned address is not accepted"
        )
    assert address is not None and message is not None and signature is not None
    return WalletProof(address=address, message=decode_wallet_message(message), signature=signature)


async def get_user_or_wallet(
    settings: Annotated[Settings, Depends(get_settings)],
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    address: Annotated[str | None, Depends(_wallet_address)],
    message: Annotated[str | None, Depends(_wallet_message)],
    signature: Annotated[str | None, Depends(_wallet_signature)],
) -> Principal:
    """The one authentication dependency of every protected route: a Bearer JWT or a signed wallet message."""
    if credentials is not None:  # a Bearer token wins; wallet headers are then ignored
        return await authenticate(settings, services.read_models.redis, bearer=credentials.credentials, wallet=None)
    proof = wallet_proof(address, message, signature)
    return await authenticate(settings, services.read_models.redis, bearer=None, wallet=proof)


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
UserDep = Annotated[Principal, Depends(get_user_or_wallet)]


def get_options(request: Request) -> ApiOptions:
    options: ApiOptions = request.app.state.options
    return options


OptionsDep = Annotated[ApiOptions, Depends(get_options)]
