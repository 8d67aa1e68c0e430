"""A certificate page opened before the certificate reaches the read models waits for it (Debian's chromium
via Playwright, against a real uvicorn server and pipeline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.app import create_app
from api.runs import idempotent_run_id
from tests.e2e.browser import CHROMIUM_FLAGS
from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import run_body
from tests.integration.test_api_support import serve

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is in the test extra: pip install -e '.[test]'"
)

RUNS = "/api/v1/verification/runs"


async def test_a_certificate_page_opened_early_shows_the_certificate_once_it_is_issued(
    running: Running, chromium: str, sample_repo: Path, tmp_path: Path
) -> None:
    # The run page learns of a certificate from the live stream, before the writer has projected it: the
    # certificate page it links to used to answer "404: not found" once and stay so.
    run_id = idempotent_run_id("dora", "fresh-1")  # known before the run exists
    problems: list[str] = []
    app = create_app(running.settings, running.services)
    async with serve(app) as address, playwright_api.async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = await context.new_page()
            page.set_default_timeout(60_000)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            await page.goto(f"http://{address}/#/certificates/cert-{run_id}")
            await page.wait_for_selector("#certificate-waiting")  # not there yet: the page waits
            response = await running.api.post(
                RUNS,
                json=run_body(sample_repo, limit=2),
                headers={**running.auth("dora"), "Idempotency-Key": "fresh-1"},
            )
            assert response.status_code == 201 and response.json()["run_id"] == run_id
            await page.wait_for_selector("#content-hash")
            assert await page.locator("#certificate-waiting").count() == 0
        finally:
            await context.close()
    assert not problems, problems
