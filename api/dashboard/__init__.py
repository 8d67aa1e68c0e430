"""The web dashboard at `/`: plain ES modules and CSS committed under `static/`, served as files.

No build step and no CDN: the browser loads `index.html`, which imports `app.js` and its modules from
`/dashboard/`, so the page works on a machine without network access, like `/docs`.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_URL = "/dashboard"
# Assets are small and change with the code: revalidate each load (a 304 costs one round trip).
NO_CACHE = {"Cache-Control": "no-cache"}


class _Assets(StaticFiles):
    """StaticFiles whose answers always revalidate, so an upgraded server never runs stale modules."""

    def file_response(
        self, full_path: PathLike[str] | str, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(NO_CACHE)
        return response


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard page at `/` and its modules and styles under `/dashboard/`."""
    app.mount(ASSETS_URL, _Assets(directory=STATIC_DIR), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)
