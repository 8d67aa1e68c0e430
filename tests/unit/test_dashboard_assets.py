"""The dashboard works offline: `/` and every module it imports are served by the API, and no asset names
an external host (no CDN, no web fonts)."""

from __future__ import annotations

import re
from posixpath import dirname, normpath

import httpx

from api.app import create_app
from api.dashboard import STATIC_DIR
from echelon_platform.config import Settings

SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # an XML name, never fetched
IMPORT = re.compile(r"""^\s*import\s(?:[^"';]*?\sfrom\s*)?["']([^"']+)["']""", re.MULTILINE)


async def test_every_module_the_page_imports_is_served_and_local() -> None:
    # The page needs no backing service to be served, so the lifespan (which connects to them) is not run.
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        queue = re.findall(r"""(?:src|href)=["'](/dashboard/[^"']+)["']""", page.text)
        assert "/dashboard/app.js" in queue and "/dashboard/style.css" in queue
        seen: set[str] = set()
        while queue:
            url = queue.pop()
            if url in seen:
                continue
            seen.add(url)
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["cache-control"] == "no-cache"
            if url.endswith(".js"):
                assert "javascript" in asset.headers["content-type"], url  # browsers refuse modules otherwise
                queue += [normpath(f"{dirname(url)}/{spec}") for spec in IMPORT.findall(asset.text)]
    served = {f"/dashboard/{p.relative_to(STATIC_DIR)}" for p in STATIC_DIR.rglob("*") if p.suffix in (".js", ".css")}
    assert served <= seen, f"assets nothing imports: {served - seen}"


def test_no_asset_names_an_external_host() -> None:
    for path in [*STATIC_DIR.rglob("*.js"), *STATIC_DIR.rglob("*.css"), *STATIC_DIR.rglob("*.html")]:
        text = path.read_text().replace(SVG_NAMESPACE, "")
        for marker in ("http://", "https://", "cdn.", "fonts.googleapis"):
            assert marker not in text, f"{path.name} references {marker!r}"
