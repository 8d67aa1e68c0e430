"""ECHELON_TRUSTED_PROXIES: parsed strictly, and turned into uvicorn's forwarded-header options."""

from __future__ import annotations

import pydantic
import pytest

from echelon.http_server import proxy_options
from echelon_platform.config import Settings


def test_no_proxy_is_trusted_by_default_not_even_loopback() -> None:
    options = proxy_options(Settings())
    assert options == {"proxy_headers": False, "forwarded_allow_ips": []}


def test_addresses_and_networks_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHELON_TRUSTED_PROXIES", "10.0.0.5, 192.168.0.0/16,::1")
    settings = Settings()
    assert settings.trusted_proxies == ["10.0.0.5", "192.168.0.0/16", "::1"]
    assert proxy_options(settings) == {"proxy_headers": True, "forwarded_allow_ips": settings.trusted_proxies}


@pytest.mark.parametrize("value", ["proxy.internal", "10.0.0.300", "*"])
def test_anything_but_an_address_or_network_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # uvicorn would take a typo (or "*") as a host literal, or trust everyone: refuse at start-up instead.
    monkeypatch.setenv("ECHELON_TRUSTED_PROXIES", value)
    with pytest.raises(pydantic.ValidationError, match="not an IP address or network"):
        Settings()
