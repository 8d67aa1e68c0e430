"""`/docs` and `/redoc` work without network: their pages name no external host and their assets are served."""

from __future__ import annotations

import re

import httpx
import pytest

from api.app import create_app
from echelon_platform.config import Settings

EXTERNAL = ("cdn.", "https://", "http://", "fonts.googleapis", "//")


async def _get(path: str) -> httpx.Response:
    # The pages need no backing service, so the lifespan (which connects to them) is not run.
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(path)


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {"application/javascript", "text/javascript", "text/css", "image/png"}),
        ("/redoc", {"application/javascript", "text/javascript", "image/png"}),
    ],
)
async def test_docs_pages_reference_only_local_assets(page: str, assets: set[str]) -> None:
    response = await _get(page)
    assert response.status_code == 200
    html = response.text
    for marker in EXTERNAL:
        assert marker not in html, f"{page} references {marker!r}"
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    urls += re.findall(r"""url: *['"]([^'"]+)['"]""", html)  # Swagger UI's spec and asset URLs in its script
    local_assets = [u for u in urls if u.startswith("/docs-assets/")]
    assert len(local_assets) >= (3 if page == "/docs" else 2), urls
    for url in local_assets:
        asset = await _get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].split(";")[0] in assets, (url, asset.headers["content-type"])
        assert len(asset.content) > 1000


async def test_openapi_document_still_served_and_lists_no_docs_routes() -> None:
    response = await _get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/docs" not in paths and "/redoc" not in paths and not any(p.startswith("/docs-assets") for p in paths)
