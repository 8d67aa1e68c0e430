"""The oracle port: one request shape for every transport, one validator for every reply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from echelon_platform.domain.values import GroundTruthRecord, OracleReply
from echelon_platform.errors import OracleError

_REQUIRED_TEXT = ("summary", "follow_up_response")


class Oracle(Protocol):
    async def invoke(self, record: GroundTruthRecord, follow_up_question: str) -> OracleReply: ...


def build_request(record: GroundTruthRecord, follow_up_question: str) -> dict[str, Any]:
    """The exact body an oracle receives: only what a reviewer of the change would see.

    Timestamps, authors and URLs stay out so an oracle cannot look the answer up elsewhere.
    """
    return {
        "pr": {
            "id": record.id,
            "title": record.title,
            "description": record.description,
            "diff_content": record.diff_content,
            "files_changed": list(record.files_changed),
        },
        "follow_up_question": follow_up_question,
    }


def parse_reply_bytes(body: bytes) -> OracleReply:
    """Decode an oracle's raw response body; anything but a JSON object is an OracleError."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OracleError(f"oracle response is not valid JSON ({exc.msg} at position {exc.pos})") from exc
    return parse_reply(payload)


def parse_reply(payload: object) -> OracleReply:
    """Validate a decoded reply; the reason names the offending field so construct authors can fix it."""
    if isinstance(payload, OracleReply):
        return payload
    if not isinstance(payload, Mapping):
        raise OracleError(f"oracle response must be a JSON object, got {_json_type(payload)}")
    for key in (*_REQUIRED_TEXT, "key_claims"):
        if key not in payload:
            raise OracleError(f"oracle response is missing {key!r}")
    for key in _REQUIRED_TEXT:
        if not isinstance(payload[key], str):
            raise OracleError(f"oracle response field {key!r} must be a string, got {_json_type(payload[key])}")
    claims = payload["key_claims"]
    if not isinstance(claims, list):
        raise OracleError(f"oracle response field 'key_claims' must be a list, got {_json_type(claims)}")
    for i, claim in enumerate(claims):
        if not isinstance(claim, str):
            raise OracleError(f"oracle response key_claims[{i}] must be a string, got {_json_type(claim)}")
    metadata = payload.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise OracleError(f"oracle response field 'metadata' must be an object, got {_json_type(metadata)}")
    return OracleReply(
        summary=payload["summary"],
        key_claims=list(claims),
        follow_up_response=payload["follow_up_response"],
        metadata=dict(metadata) if metadata is not None else None,
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__
