"""The 422 answer for a request that fails validation: FastAPI's list of field errors, minus secrets.

FastAPI's default answer repeats each rejected value as `input`. For a model-wide rule that is the whole
body (with its `oracle_headers` and `github_token`), for a bad oracle header its value, for a header
parameter the header itself. So `input` is kept only for a scalar that is neither in a header or cookie
nor under a secret field (one typed `SecretStr`/`SecretBytes` in the route's body model); `loc`, `msg`
and `type` still say which field is wrong and why.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, SecretBytes, SecretStr

_SECRET_TYPES = (SecretStr, SecretBytes)
_HIDDEN_LOCATIONS = frozenset({"header", "cookie"})


def secret_fields(model: object) -> frozenset[str]:
    """Names of the fields of `model` (and of models nested in it) whose type contains a secret type."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return frozenset()
    return _secret_fields(model)


@functools.cache
def _secret_fields(model: type[BaseModel]) -> frozenset[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        if _holds_secret(field.annotation):
            names.update({name, field.alias or name})
        for inner in _types_in(field.annotation):
            names |= secret_fields(inner)
    return frozenset(names)


def _types_in(annotation: object) -> Iterable[object]:
    """`annotation` and every type argument in it (`dict[str, SecretStr] | None` → dict, str, SecretStr, None)."""
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _types_in(arg)


def _holds_secret(annotation: object) -> bool:
    return any(isinstance(t, type) and issubclass(t, _SECRET_TYPES) for t in _types_in(annotation))


def public_errors(errors: Iterable[Mapping[str, Any]], secret: frozenset[str]) -> list[dict[str, Any]]:
    """The errors with `input` removed wherever it could carry a secret."""
    out = []
    for error in errors:
        public = dict(error)
        loc = tuple(public.get("loc", ()))
        value = public.get("input")
        if (
            (loc and loc[0] in _HIDDEN_LOCATIONS)
            or any(isinstance(part, str) and part in secret for part in loc)
            or isinstance(value, Mapping | list | tuple | set | frozenset)
        ):
            public.pop("input", None)
        out.append(public)
    return out


def _route_secrets(request: Request) -> frozenset[str]:
    body_field = getattr(request.scope.get("route"), "body_field", None)
    return secret_fields(getattr(getattr(body_field, "field_info", None), "annotation", None))


async def validation_error_answer(request: Request, exc: Exception) -> Response:
    """The app's RequestValidationError handler (422 `{"detail": [...]}`, FastAPI's shape)."""
    assert isinstance(exc, RequestValidationError)
    detail = jsonable_encoder(public_errors(exc.errors(), _route_secrets(request)))
    # orjson, not json.dumps(allow_nan=False): no value in an error can turn the answer into a 500.
    return Response(orjson.dumps({"detail": detail}), status_code=422, media_type="application/json")
