"""The runs list in chromium: empty states that say what to do, a count that follows runs as they arrive,
paging past the newest 50, a date filter, and going to a run by its id or a prefix of it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from echelon.fake_flow import FlowConfig
from echelon_platform.config import Settings
from tests.e2e.test_dashboard_support import browser, dashboard_stack, sign_in

OLD_DAY = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


async def test_runs_list_empty_states_live_count_paging_date_filter_and_search(
    settings: Settings, chromium: str, tmp_path: Path
) -> None:
    async with dashboard_stack(settings) as stack, browser(chromium, tmp_path) as b:
        page = await b.page()

        # ---- nothing yet: the empty states say how to start ----
        await page.goto(f"{stack.base}/#/certificates")
        empty_certs = page.locator("#certificates-empty")
        await empty_certs.wait_for()
        assert await page.locator("#certificates-empty a[href='#/submit']").count() == 1
        await sign_in(page, stack.base, stack.token("dora"))
        hint = page.locator("#runs-empty")
        await hint.wait_for()
        text = await hint.text_content() or ""
        assert "echelon verify sample --oracle-callable pipeline_workers.oracles.sample:summarise --watch" in text
        assert "local" in text and "dora" in text  # whose runs the CLI makes, and who is signed in
        assert await page.locator("#runs-empty a[href='#/submit']").count() == 1
        assert await page.is_hidden("#runs") and await page.is_hidden("#page-older")
        await b.shot(page, "1-no-runs")

        # ---- the count follows runs as they arrive over the stream (no reload) ----
        await sign_in(page, stack.base, stack.token("local"))
        await page.wait_for_selector("#runs-empty")
        await page.wait_for_selector("#live.on")
        await stack.seed(FlowConfig(runs=53, replays=(1, 2), rate=4000, concurrent=8, seed=5))
        await page.wait_for_selector("#runs-total[data-total='53']")
        assert await page.is_hidden("#runs-empty")
        # One page, the newest 50: rows keep arriving over the stream after the count is re-read.
        await page.wait_for_function("document.querySelectorAll('#runs tbody tr').length === 50")
        await b.shot(page, "2-runs-arrived-live")

        # ---- paging past the newest 50 ----
        newest = await page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")
        assert await page.is_disabled("#page-newer")
        await page.click("#page-older")
        await page.wait_for_selector("#runs-total:has-text('runs 51–53 of 53')")
        await page.wait_for_function("document.querySelectorAll('#runs tbody tr').length === 3")
        older = await page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)")
        listed = await stack.runs(limit=100)
        assert newest + older == [r["run_id"] for r in listed["runs"]]  # newest first, nothing lost or repeated
        assert await page.is_disabled("#page-older")
        assert "offset=50" in page.url  # a reload keeps the page
        await page.click("#page-newer")
        await page.wait_for_selector("#runs-total:has-text('runs 1–50 of 53')")

        # ---- filter by date: a run created on an earlier day ----
        old_run = await stack.seed_dated(OLD_DAY, seed=9)
        await page.wait_for_selector("#runs-total[data-total='54']")
        await page.fill("#filter-from", "2026-03-14")
        await page.fill("#filter-to", "2026-03-14")
        await page.click("#filters button[type=submit]")
        await page.wait_for_selector("#runs-total[data-total='1']")
        assert await page.eval_on_selector_all("#runs tbody tr", "rows => rows.map(r => r.dataset.run)") == [old_run]
        await b.shot(page, "3-date-filter")
        await page.fill("#filter-from", "2026-03-15")
        await page.click("#filters button[type=submit]")
        none = page.locator("#runs-none-match")
        await none.wait_for()  # a filter that matches nothing says so and offers a way back
        await b.shot(page, "4-filter-matches-nothing")
        await none.locator("a").click()
        await page.wait_for_selector("#runs-total[data-total='54']")
        assert await page.input_value("#filter-from") == ""

        # ---- go to a run: its exact id, then a prefix naming one run ----
        target = older[-1]  # on the second page: not among the rows shown
        await page.fill("#search-run", target)
        await page.click("#run-search button[type=submit]")
        await page.wait_for_url(f"**/#/runs/{target}")
        await page.wait_for_selector("#run-head[data-status]")
        ids = [r["run_id"] for r in (await stack.runs(limit=100))["runs"]]
        prefix = next(
            run_id[:n]
            for n in range(14, 27)
            for run_id in ids
            if run_id != target and sum(other.startswith(run_id[:n]) for other in ids) == 1
        )
        await page.goto(f"{stack.base}/#/runs")
        await page.wait_for_selector("#runs tbody tr")
        await page.fill("#search-run", prefix.lower())  # ids are upper case; a prefix typed in lower case works
        await page.click("#run-search button[type=submit]")
        await page.wait_for_url(f"**/#/runs/{prefix}*")
        assert page.url.rsplit("/", 1)[1].startswith(prefix)
        await page.goto(f"{stack.base}/#/runs")
        await page.wait_for_selector("#runs tbody tr")
        await page.fill("#search-run", "ZZZZ")
        await page.click("#run-search button[type=submit]")
        await page.wait_for_selector("#search-note[data-hits='0']")
        assert "No run starts with" in (await page.text_content("#search-note") or "")
    assert not b.problems, b.problems
    assert len(list(b.shots.glob("*.png"))) == 4
