"""Passwords never shown: URLs are masked before they reach a log line or a repr."""

from __future__ import annotations

import pytest

from echelon_platform.redact import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://postgres:s3cr%2Ft@127.0.0.1:5432/db", "postgresql://postgres:***@127.0.0.1:5432/db"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("nats://a:s3cret@h1:4222,nats://b:s3cret@h2:4222", "nats://a:***@h1:4222,nats://b:***@h2:4222"),
        ("postgresql://postgres@127.0.0.1/db", "postgresql://postgres@127.0.0.1/db"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("http://u:s3cret@[::1/x", "***"),
        (None, None),
    ],
)
def test_passwords_are_masked(url: str | None, shown: str | None) -> None:
    assert redact_url(url) == shown
