"""Documented error responses, shared by every router so the OpenAPI document lists each one a route can give."""

from __future__ import annotations

from typing import Any

from api.schemas import ErrorBody, ValidationErrorBody

Responses = dict[int | str, dict[str, Any]]

_HEADER_STR = {"schema": {"type": "string"}}

UNAUTHORIZED: Responses = {
    401: {
        "model": ErrorBody,
        "description": "Missing or invalid credentials (the detail says which)",
        "headers": {"WWW-Authenticate": {**_HEADER_STR, "description": "`Bearer`"}},
    }
}
NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "Not found (or not yours)"}}
INVALID: Responses = {
    422: {
        "model": ValidationErrorBody,
        "description": "Invalid request: a list of field errors, or one message saying what to change",
    }
}
RATE_LIMITED: Responses = {
    429: {
        "model": ErrorBody,
        "description": "Too many requests from this user",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}},
    }
}
UNAVAILABLE: Responses = {
    503: {"model": ErrorBody, "description": "NATS or Redis unavailable; retry later"},
}
MALFORMED_BODY: Responses = {
    400: {"model": ErrorBody, "description": "The body is not parseable JSON (e.g. not UTF-8)"},
}
CONFLICT: Responses = {
    409: {"model": ErrorBody, "description": "A request with this Idempotency-Key is still in progress"},
}


def merge(*parts: Responses) -> Responses:
    out: Responses = {}
    for part in parts:
        out.update(part)
    return out


PUBLIC = merge(INVALID, UNAVAILABLE)
PROTECTED = merge(UNAUTHORIZED, INVALID, UNAVAILABLE)
