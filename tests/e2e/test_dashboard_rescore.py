"""The certificate page of a run with repeats shows each figure's spread, and a rescore's page links to the
certificate it rescored (Debian's chromium via Playwright, against a real uvicorn server and pipeline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.app import create_app
from tests.e2e.browser import CHROMIUM_FLAGS
from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import certificate_of, run_body
from tests.integration.test_api_support import serve

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is in the test extra: pip install -e '.[test]'"
)

RUNS = "/api/v1/verification/runs"


async def test_certificate_page_shows_the_repeat_spread_and_the_rescore_link(
    running: Running, chromium: str, sample_repo: Path, tmp_path: Path
) -> None:
    response = await running.api.post(RUNS, json=run_body(sample_repo, limit=2, repeats=2), headers=running.auth())
    first = await certificate_of(running, response.json()["run_id"])
    admin = {"Authorization": f"Bearer {running.token('root', admin=True)}"}
    created = await running.api.post(
        f"{RUNS}/{first.run_id}/rescore", json={"methodology_version": "v1"}, headers=admin
    )
    second = await certificate_of(running, created.json()["run_id"])
    problems: list[str] = []
    app = create_app(running.settings, running.services)
    async with serve(app) as address, playwright_api.async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = await context.new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            await page.goto(f"http://{address}/#/certificates/{second.certificate_id}")
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            await page.wait_for_selector("#rescored-from")
            assert first.certificate_id in (await page.text_content("#rescored-from") or "")
            row = page.locator("#repeat-spread tr[data-figure=precision]")
            cells = await row.locator("td").all_text_contents()
            assert cells[0] == "precision" and cells[2] == "0.0000", cells  # the sample oracle never wavers
            await page.screenshot(path=tmp_path / "rescored-certificate.png", full_page=True)
            await page.click("#rescored-from a")
            await page.wait_for_selector(f"#certificate h1:has-text('{first.certificate_id}')")
            assert await page.locator("#rescored-from").count() == 0
            assert await page.locator("#repeat-spread tbody tr").count() == 4
        finally:
            await context.close()
    assert not problems, problems
