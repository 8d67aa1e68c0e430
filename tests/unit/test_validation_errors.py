"""Which parts of a validation error may be repeated to the caller (the secrets test is in the API tests)."""

from __future__ import annotations

from api.schemas import RunCreate
from api.signin import WalletSignIn
from api.validation_errors import public_errors, secret_fields


def test_secret_fields_are_found_from_the_body_model() -> None:
    assert secret_fields(RunCreate) == {"oracle_headers", "github_token"}
    assert secret_fields(WalletSignIn) == frozenset()
    assert secret_fields(None) == frozenset()


def test_input_is_kept_only_for_scalars_outside_headers_and_secret_fields() -> None:
    secret = secret_fields(RunCreate)
    errors = [
        {"loc": ("body", "limit"), "msg": "too big", "type": "less_than_equal", "input": 5000},
        {"loc": ("body",), "msg": "needs oracle_url", "type": "value_error", "input": {"github_token": "ghp_x"}},
        {"loc": ("body", "oracle_headers", "X-Key"), "msg": "not a string", "type": "string_type", "input": 5},
        {"loc": ("body", "github_token"), "msg": "not a string", "type": "string_type", "input": 7},
        {"loc": ("header", "x-api-key"), "msg": "too long", "type": "string_too_long", "input": "sk-live"},
        {"loc": ("body", "labels"), "msg": "too long", "type": "too_long", "input": ["a", "b"]},
    ]
    public = public_errors(errors, secret)
    assert [("input" in e) for e in public] == [True, False, False, False, False, False]
    assert [e["loc"] for e in public] == [e["loc"] for e in errors]  # still says where and why
