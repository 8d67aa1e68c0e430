"""Cross-origin browser access: preflight on every route, the dev stack's loopback default, none in
production until ECHELON_CORS_ORIGINS is set, and the same list for the WebSocket's Origin."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from api.app import create_app
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.integration.test_api_support import API, http_client, serve

PAGE = "http://localhost:5173"
PREFLIGHT_HEADERS = "authorization, content-type, idempotency-key"


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, concrete path) of every API route in the OpenAPI document, path parameters filled in."""
    return [
        (method.upper(), path.replace("{", "x").replace("}", ""))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if path.startswith("/api/")
    ]


def _preflight(method: str, origin: str = PAGE) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": PREFLIGHT_HEADERS,
    }


async def test_the_dev_stack_answers_preflight_on_every_route_for_loopback_pages(
    settings: Settings, services: Services
) -> None:
    app = create_app(settings, services)  # api_host 127.0.0.1, ECHELON_CORS_ORIGINS unset
    routes = _routes(app)
    assert len(routes) >= 10, routes
    async with http_client(app) as client:
        for method, path in routes:
            answer = await client.options(path, headers=_preflight(method))
            assert answer.status_code == 200, (method, path, answer.status_code, answer.text)
            assert answer.headers["access-control-allow-origin"] == PAGE
            allowed = answer.headers["access-control-allow-headers"].lower()
            assert all(h in allowed for h in ("authorization", "content-type", "idempotency-key")), allowed
            assert method in answer.headers["access-control-allow-methods"]
        # The answer itself carries the header a browser checks, and exposes the request id.
        listed = await client.get(f"{API}/certificates", headers={"Origin": "http://127.0.0.1:3000"})
        assert listed.headers["access-control-allow-origin"] == "http://127.0.0.1:3000"
        assert "x-request-id" in listed.headers["access-control-expose-headers"].lower()
        # A page elsewhere is not let in, even on the dev stack.
        foreign = await client.options(f"{API}/runs", headers=_preflight("POST", "http://evil.example"))
        assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers


async def test_production_allows_no_origin_until_configured(settings: Settings, services: Services) -> None:
    exposed = settings.model_copy(update={"api_host": "0.0.0.0", "jwt_secret": type(settings.jwt_secret)("s" * 40)})
    async with http_client(create_app(exposed, services)) as client:
        answer = await client.get(f"{API}/certificates", headers={"Origin": PAGE})
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
        assert (await client.options(f"{API}/runs", headers=_preflight("POST"))).status_code == 405

    configured = exposed.model_copy(update={"cors_origins": ["https://app.example"]})
    async with http_client(create_app(configured, services)) as client:
        ok = await client.options(f"{API}/runs", headers=_preflight("POST", "https://app.example"))
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        dev_page = await client.options(f"{API}/runs", headers=_preflight("POST", PAGE))
        assert "access-control-allow-origin" not in dev_page.headers


def test_the_origin_list_is_read_comma_separated_or_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHELON_CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("ECHELON_CORS_ORIGINS", '["*"]')
    assert Settings().cors_origins == ["*"]


async def test_the_websocket_origin_is_checked_against_the_same_list(settings: Settings, services: Services) -> None:
    configured = settings.model_copy(update={"cors_origins": ["http://app.example:8080"]})
    async with serve(create_app(configured, services)) as address:
        url = f"ws://{address}/api/v1/stream"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        for origin in ("http://app.example:8080", f"http://{address}", None):  # listed, same origin, no browser
            async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                await ws.send('{"type": "ping"}')
