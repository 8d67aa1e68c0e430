"""JSON Canonicalization Scheme (RFC 8785): the one byte form of a JSON value that is hashed and signed.

Any party can rebuild these bytes in any language from the certificate's JSON, so the hash and the
signature do not depend on our serializer's formatting. Rules: object keys sorted by their UTF-16 code
units, no whitespace, strings with minimal escaping (only `"`, `\\` and control characters), numbers in
ECMAScript `Number.prototype.toString` form (IEEE 754 doubles; integers beyond 2**53 are refused).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from echelon_platform.errors import EchelonError

_MAX_SAFE_INT = 2**53


class CanonicalJSONError(EchelonError):
    """A value that has no RFC 8785 form (NaN, infinity, huge integers, non-JSON types)."""


def canonicalize(value: object) -> bytes:
    """The RFC 8785 UTF-8 bytes of ``value`` (dicts, lists, str, int, float, bool, None)."""
    parts: list[str] = []
    _write(value, parts)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form, hence no canonical form
        raise CanonicalJSONError(f"string is not valid Unicode: {exc.reason}") from exc


def _write(value: object, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int | float):
        out.append(format_number(value))
    elif isinstance(value, Mapping):
        keys = list(value)
        if not all(isinstance(k, str) for k in keys):
            raise CanonicalJSONError("object keys must be strings")
        out.append("{")
        for i, key in enumerate(sorted(keys, key=lambda k: k.encode("utf-16-be", "surrogatepass"))):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise CanonicalJSONError(f"{type(value).__name__} is not a JSON value")


def _string(text: str) -> str:
    # Python's escaper matches RFC 8785: \" \\ \b \f \n \r \t, other controls as lowercase \u00xx,
    # everything else (non-ASCII included) literally.
    return json.dumps(text, ensure_ascii=False)


def format_number(number: int | float) -> str:
    """ECMAScript's shortest round-trip form of a double (RFC 8785 section 3.2.2.3)."""
    if isinstance(number, int):
        if abs(number) > _MAX_SAFE_INT:
            raise CanonicalJSONError(f"integer {number} is beyond 2**53 and has no exact JSON number form")
        number = float(number)
    if not math.isfinite(number):
        raise CanonicalJSONError(f"{number} is not a JSON number")
    if number == 0:
        return "0"  # also -0
    sign = "-" if number < 0 else ""
    mantissa, _, exp_text = repr(abs(number)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    exponent = (int(exp_text) if exp_text else 0) - len(frac)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    k = len(digits)
    n = k + exponent  # value = 0.digits × 10**n
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        body = (digits if k == 1 else f"{digits[0]}.{digits[1:]}") + ("e+" if e >= 0 else "e-") + str(abs(e))
    return sign + body
