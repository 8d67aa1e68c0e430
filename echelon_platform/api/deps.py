"""FastAPI dependencies: the process's resources (built in `lifespan`) and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from echelon_platform.auth import Principal, decode_jwt
from echelon_platform.config import Settings
from echelon_platform.errors import AuthError
from echelon_platform.services import Services

_bearer = HTTPBearer(auto_error=False, description="JWT (HS256) with `sub` = user id")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_user_or_wallet(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The one authentication dependency of every protected route."""
    if credentials is None:
        raise AuthError("missing credentials: send `Authorization: Bearer <token>`")
    return decode_jwt(credentials.credentials, settings.jwt_secret.get_secret_value(), settings.jwt_algorithm)


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
UserDep = Annotated[Principal, Depends(get_user_or_wallet)]
