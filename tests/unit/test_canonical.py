"""RFC 8785 canonical JSON: the examples of the RFC and its number-formatting table."""

from __future__ import annotations

import math

import pytest

from echelon_platform.domain.canonical import CanonicalJSONError, canonicalize, format_number


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1, "1"),
        (-1.5, "-1.5"),
        (4.50, "4.5"),
        (2e-3, "0.002"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e30, "1e+30"),
        (0.000000000000000000000000001, "1e-27"),
        (333333333.33333329, "333333333.3333333"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740992, "9007199254740992"),
        (295147905179352830000.0, "295147905179352830000"),
        (0.1 + 0.2, "0.30000000000000004"),
    ],
)
def test_numbers_use_ecmascript_form(number: float, expected: str) -> None:
    assert format_number(number) == expected


def test_rfc_8785_example_object() -> None:
    # RFC 8785 section 3.2.3: keys sorted by UTF-16 code units (so U+1F600 sorts before U+FB33).
    data = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    out = canonicalize(data).decode("utf-8")
    keys = ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert out == "{" + ",".join(f'"{k if k != chr(13) else chr(92) + "r"}":"{data[k]}"' for k in keys) + "}"


def test_structure_whitespace_literals_and_escapes() -> None:
    value = {"b": [None, True, False, 1.0, 'a\u0007"\\/é\u2028'], "a": {}}
    assert canonicalize(value) == '{"a":{},"b":[null,true,false,1,"a\\u0007\\"\\\\/é\u2028"]}'.encode()


@pytest.mark.parametrize("bad", [math.nan, math.inf, 2**53 + 1, b"bytes", {1: "x"}, object()])
def test_values_without_a_canonical_form_are_refused(bad: object) -> None:
    with pytest.raises(CanonicalJSONError):
        canonicalize(bad)
