"""Every dashboard page on a phone-sized screen (420 px wide) in chromium: nothing overflows the viewport
sideways; wide tables scroll inside their own box instead."""

from __future__ import annotations

from pathlib import Path

from echelon.fake_flow import FlowConfig
from echelon_platform.config import Settings
from tests.e2e.test_dashboard_support import PHONE, browser, dashboard_stack, fits, sign_in


async def test_every_page_fits_a_420_px_screen(settings: Settings, chromium: str, tmp_path: Path) -> None:
    async with dashboard_stack(settings) as stack, browser(chromium, tmp_path) as b:
        page = await b.page(viewport=PHONE)
        widths: dict[str, int] = {}

        async def check(name: str, ready: str) -> None:
            await page.wait_for_selector(ready)
            widths[name] = await fits(page)
            await b.shot(page, name)

        await page.goto(f"{stack.base}/#/signin")
        await check("1-signin", "main[data-view=signin]")
        await sign_in(page, stack.base, stack.token("local"))
        await check("2-runs-empty", "#runs-empty")
        await stack.seed(FlowConfig(runs=4, replays=(4, 6), rate=4000, run_failure=0.0, replay_failure=0.3, seed=21))
        await page.reload()
        await check("3-runs", "#runs tbody tr")
        box = await page.eval_on_selector("#runs", "t => [t.parentElement.scrollWidth, t.parentElement.clientWidth]")
        assert box[0] > box[1]  # the table is wider than the screen: it scrolls inside its box
        run_id = await page.get_attribute("#runs tbody tr", "data-run")
        await page.goto(f"{stack.base}/#/runs/{run_id}")
        await page.wait_for_selector("#replay-groups details.replay")
        await page.click("#expand-all")
        requested = page.locator("#replay-groups li[data-topic='verify.replay.requested']")
        await requested.locator("details.payload summary").first.click()
        await check("4-run", "#replay-groups li details.payload[open] pre")  # a diff in the payload, too
        await page.click("#certificate-link")
        await check("5-certificate", "#verify-result [data-valid=true]")
        await page.click("[data-nav=certificates]")
        await check("6-certificates", "#certificates tbody tr")
        await page.fill("#cert-construct", "no-such-construct")
        await page.click("main form button[type=submit]")
        await check("7-certificates-none-match", "#certificates-none-match")  # says so, offers all
        assert await page.is_hidden("#certificates")
        await page.click("#certificates-none-match a")
        await page.wait_for_selector("#certificates tbody tr")
        await page.click("[data-nav=leaderboard]")
        await check("8-leaderboard", "#leaderboard-chart rect")
        await page.click("[data-nav=submit]")
        await check("9-submit", "#submit-form")
        assert widths and all(w <= PHONE["width"] for w in widths.values()), widths
    assert not b.problems, b.problems
    assert len(list(b.shots.glob("*.png"))) == 9
