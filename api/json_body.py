"""JSON request bodies are checked as strict JSON with a nesting cap before any route reads them.

FastAPI decodes a body with the standard library's `json.loads`, which accepts `NaN` and `Infinity`,
turns `1e999` into infinity, keeps lone surrogates, and recurses once per nesting level in C. So every
POST/PUT/PATCH/DELETE body declared as JSON (or sent without a content type) is first decoded here by
orjson: strict RFC 8259, and it stops by itself at 1024 levels. A body is refused with 422 and a reason
when it is not JSON, carries a non-finite number, a string that is not UTF-8 (a lone surrogate), or nests
arrays/objects deeper than `MAX_JSON_DEPTH` levels. Only bodies that pass reach the route, so FastAPI's
own decode stays shallow and never sees a value it cannot send back in an error answer. The check runs in
the API's edge layer (api/edge.py), which also hands the decoded value to routes that take it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from echelon_platform.errors import RequestRejected

# Deeper than any body this API takes (a run request nests 2 levels), shallow enough for any decoder.
MAX_JSON_DEPTH = 32
_NON_FINITE = re.compile(r"-?(?:NaN|Infinity)")


class BodyRejected(RequestRejected):
    """A request body that is not the strict, shallow JSON the API takes (→ 422)."""


def check_json_body(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`raw` decoded; BodyRejected, saying what to change, unless it is strict JSON nesting at most
    `max_depth` levels."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BodyRejected(_reason(exc, max_depth)) from exc
    if _deeper_than(value, max_depth):
        raise BodyRejected(_too_deep(max_depth))
    return value


def _too_deep(max_depth: int) -> str:
    return f"request body nests arrays/objects deeper than {max_depth} levels"


def _reason(exc: orjson.JSONDecodeError, max_depth: int) -> str:
    doc, pos = exc.doc, exc.pos
    if "depth" in exc.msg:  # orjson's own limit (1024): far beyond ours
        return _too_deep(max_depth)
    if _NON_FINITE.match(doc, pos) or (pos > 0 and _NON_FINITE.match(doc, pos - 1)):
        return f"request body is not valid JSON: non-finite number at character {pos} (NaN and Infinity are not JSON)"
    if "infinity" in exc.msg:
        return f"request body is not valid JSON: the number at character {pos} is too large for a 64-bit float"
    return f"request body is not valid JSON: {exc.msg} at character {pos}"


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest more than `limit` levels (a scalar is 0, `[]` is 1). Iterative."""
    if not isinstance(value, dict | list):
        return False
    pending: list[tuple[Any, int]] = [(value, 0)]  # containers only
    while pending:
        node, depth = pending.pop()
        if depth + 1 > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def declares_json(content_type: bytes | None) -> bool:
    """The body is JSON to FastAPI: `application/json` or `application/*+json`; no content type counts too."""
    if content_type is None:
        return True
    media = content_type.decode("latin-1").split(";", 1)[0].strip().lower()
    maintype, _, subtype = media.partition("/")
    return maintype == "application" and (subtype == "json" or subtype.endswith("+json"))
