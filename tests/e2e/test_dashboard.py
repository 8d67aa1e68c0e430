"""The dashboard in a real browser (Debian's chromium via Playwright), against a real uvicorn server and the
whole pipeline: sign in with a token, submit a run from the page, watch it progress live to its certificate,
open the certificate and verify it; screenshots go to the test's tmp dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from api.options import ApiOptions
from tests.e2e.browser import CHROMIUM_FLAGS
from tests.e2e.conftest import Running
from tests.integration.test_api_support import serve

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is in the test extra: pip install -e '.[test]'"
)

TIMEOUT_MS = 90_000


async def test_sign_in_submit_watch_live_and_verify_the_certificate(
    running: Running, chromium: str, tmp_path: Path
) -> None:
    app = create_app(running.settings, running.services, options=ApiOptions(runs_per_minute=100))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    problems: list[str] = []

    def note(problem: str) -> None:
        print(problem)  # shown with a failure at any later step, not only by the final assertion
        problems.append(problem)

    async with serve(app) as address, playwright_api.async_playwright() as pw:
        base = f"http://{address}"
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data-dir
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
        )
        try:
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda exc: note(f"page error: {exc}"))
            page.on("console", lambda msg: note(msg.text) if msg.type == "error" else None)

            await page.goto(f"{base}/#/signin")
            await page.fill("#token", running.token("dora"))
            await page.click("#signin")
            await page.wait_for_selector("main[data-view=runs]")
            assert "dora" in (await page.text_content("#who") or "")
            await page.wait_for_selector("#live.on")  # the runs list follows the stream

            await page.click("[data-nav=submit]")
            await page.wait_for_selector("#submit-form")
            assert await page.input_value("#repo_url") == "sample"
            await page.fill("#limit", "3")
            await page.screenshot(path=shots / "1-submit.png")
            await page.click("#submit-run")
            await page.wait_for_url("**/#/runs/*")
            run_id = page.url.rsplit("/", 1)[1]
            await page.wait_for_selector("#run-head[data-status]")
            await page.screenshot(path=shots / "2-run-started.png")

            await page.wait_for_selector("#run-head[data-status=COMPLETED]")
            await page.screenshot(path=shots / "3-run-completed.png", full_page=True)
            shown: list[dict[str, Any]] = await page.evaluate("window.echelonMetrics?.shown ?? []")
            topics = {s["topic"] for s in shown}
            # Reached without a reload: the page applied the run's events as the stream delivered them.
            assert {"verify.run.ingested", "verify.run.completed"} <= topics, topics
            assert await page.get_attribute("#run-head [role=progressbar]", "data-progress") == "3/3"
            await page.wait_for_selector("#run-events li[data-topic='verify.run.completed']")
            timeline = await page.eval_on_selector_all("#run-events li", "els => els.map(e => e.dataset.topic)")
            assert timeline[0] == "verify.run.requested" and timeline[-1] == "verify.run.completed"
            assert await page.locator("#replay-groups details.replay[data-state=scored]").count() == 3
            assert await page.locator("#timeline a", has_text="← #").count() > 0  # causation links

            await page.click("#certificate-link")
            await page.wait_for_selector("#content-hash")
            assert len(await page.text_content("#content-hash") or "") == 64
            await page.click("#verify")
            await page.wait_for_selector("#verify-result [data-valid=true]")
            assert await page.locator("#replays tbody tr").count() == 3
            # Each figure shows its 95% interval and n (3 replays: the composite says how many more would narrow it).
            interval = await page.text_content("#metrics [data-interval=composite_score]") or ""
            assert interval.startswith("95% [") and interval.endswith("n 3"), interval
            first_replay = page.locator("#replays select").first
            await first_replay.select_option("4")
            await page.locator("#replays", has_text="saved").wait_for()
            await page.screenshot(path=shots / "4-certificate-verified.png", full_page=True)
            cert_url = page.url

            await page.click("[data-nav=leaderboard]")
            await page.wait_for_selector("#leaderboard-chart rect[data-key='dashboard-construct']")

            await page.goto(f"{base}/#/runs")
            row = page.locator(f"tr[data-run='{run_id}']")
            await row.wait_for()
            assert await row.get_attribute("data-status") == "COMPLETED"

            stranger = await context.new_page()  # its own sessionStorage: not signed in
            await stranger.goto(cert_url)
            await stranger.wait_for_selector("#content-hash")
            assert "Sign in" in (await stranger.text_content("#who") or "")
            await stranger.screenshot(path=shots / "5-public-certificate.png")

            # A second run of the same oracle on the same changes, compared side by side with the first.
            await page.click("[data-nav=submit]")
            await page.wait_for_selector("#submit-form")
            await page.fill("#limit", "3")
            await page.click("#submit-run")
            await page.wait_for_url("**/#/runs/*")
            second = page.url.rsplit("/", 1)[1]
            await page.wait_for_selector("#run-head[data-status=COMPLETED]")
            await page.goto(f"{base}/#/certificates/cert-{second}")
            await page.fill("#compare-with", f"cert-{run_id}")
            await page.click("#compare-form button")
            await page.wait_for_selector("#compare-figures tr[data-figure=composite_score]")
            assert await page.get_attribute("#compare-kind", "data-paired") == "true"
            assert "Paired over the 3 ground-truth changes" in (await page.text_content("#compare-kind") or "")
            row = await page.text_content("#compare-figures tr[data-figure=composite_score]") or ""
            assert "+0.0000" in row and "95% [" in row, row  # the same oracle: no difference; each side's interval
            await page.screenshot(path=shots / "6-compare.png", full_page=True)
        finally:
            await context.close()
    assert not problems, problems
    assert len(list(shots.glob("*.png"))) == 6
