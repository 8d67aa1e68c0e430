"""Request bodies are strict JSON with a nesting cap, checked before any route (or `json.loads`) sees them."""

from __future__ import annotations

import json
import time

import pytest

from api.json_body import MAX_JSON_DEPTH, BodyRejected, check_json_body

ATTACK = b"[" * 110_000 + b"]" * 110_000  # 220 KB: under the 256 KiB body limit


def nested(depth: int) -> bytes:
    return json.dumps({"a": 1}).encode() if depth == 1 else b'{"x": ' + nested(depth - 1) + b"}"


@pytest.mark.parametrize(
    "body",
    [b'{"a": 1}', b"[]", b"0", b'"text"', nested(MAX_JSON_DEPTH), b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH],
)
def test_strict_shallow_json_passes(body: bytes) -> None:
    check_json_body(body)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"weights": {"precision": NaN}}', "non-finite number"),
        (b'{"limit": Infinity}', "non-finite number"),
        (b"[1, -Infinity]", "non-finite number"),
        (b'{"weights": {"recall": 1e999}}', "too large for a 64-bit float"),
        (b'{"labels": ["\\ud800"]}', "not valid JSON"),  # a lone surrogate is not UTF-8 text
        (b'{"a": 1,}', "trailing comma"),
        (b"\xff\xfe", "not valid JSON"),
        (nested(MAX_JSON_DEPTH + 1), f"deeper than {MAX_JSON_DEPTH} levels"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), f"deeper than {MAX_JSON_DEPTH} levels"),
        (ATTACK, f"deeper than {MAX_JSON_DEPTH} levels"),
        (b"[" * 110_000, f"deeper than {MAX_JSON_DEPTH} levels"),
    ],
)
def test_bad_bodies_are_refused_with_a_reason(body: bytes, why: str) -> None:
    with pytest.raises(BodyRejected, match=why):
        check_json_body(body)


def test_a_wide_body_is_measured_without_recursion_and_quickly() -> None:
    wide = b"[" + b",".join([b"[[1]]"] * 40_000) + b"]"  # 240 KB, 3 levels
    started = time.perf_counter()
    check_json_body(wide)
    with pytest.raises(BodyRejected):
        check_json_body(ATTACK)
    assert time.perf_counter() - started < 2.0  # generous: milliseconds in practice
