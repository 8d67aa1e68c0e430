"""A run's page in chromium: the timeline grouped by replay with millisecond times, durations, payloads on
demand (nothing secret) and a filter, filled live as the run's events arrive; then its certificate page
with the signature, the signing key, the API's verdict and the oracle's identity."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from echelon.fake_flow import FlowConfig, plan_run
from echelon_platform.config import Settings
from tests.e2e.test_dashboard_support import browser, dashboard_stack, sign_in
from tests.integration.test_api_support import API

CLOCK = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$")


async def visible(page: Any, selector: str) -> list[str]:
    """The `data-*` key of each visible element (replay id of groups, topic of events)."""
    items: list[str] = await page.eval_on_selector_all(
        selector, "els => els.filter(e => e.offsetParent !== null).map(e => e.dataset.replay ?? e.dataset.topic)"
    )
    return items


async def test_timeline_grouped_by_replay_live_with_payloads_and_filter_then_the_certificate(
    settings: Settings, chromium: str, tmp_path: Path
) -> None:
    async with dashboard_stack(settings, logging=False) as stack, browser(chromium, tmp_path) as b:
        await b.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = await b.page()
        await sign_in(page, stack.base, stack.token("local"))

        # A run with failed replays (seeded), published in two halves around opening its page.
        config = FlowConfig(replays=(9, 9), run_failure=0.0, replay_failure=0.35)
        rng = random.Random(3)
        events = plan_run(rng, config, stack.keyring.sign)
        while not any(e.topic == "verify.replay.failed" for e in events) or events[-1].topic != "verify.run.completed":
            events = plan_run(rng, config, stack.keyring.sign)
        run_id = events[0].correlation_id.removeprefix("run-")
        half = next(i for i, e in enumerate(events) if e.topic == "verify.replay.invoked") + 1
        await stack.services.bus.publish_many(events[:half])
        await page.goto(f"{stack.base}/#/runs/{run_id}")
        await page.wait_for_selector("#live.on")
        # The stream shows the run at once; the log (the timeline's source) lags until the writer runs, and
        # the timeline catches up with no further event on the stream.
        await page.wait_for_selector("#run-head[data-status=SCORING]")
        async with page.expect_response(lambda r: f"/runs/{run_id}/events" in r.url):
            pass  # the page read the log after the stream's events, and found it empty
        assert await page.locator("#replay-groups details.replay").count() == 0
        stack.start_writer()
        await page.wait_for_function(f"document.querySelectorAll('#timeline li').length === {half}")
        await stack.services.bus.publish_many(events[half:])
        await page.wait_for_selector("#run-head[data-status=COMPLETED]")
        await page.wait_for_selector("#run-events li[data-topic='verify.run.completed']")

        # ---- grouped: run-level events, then one group per replay holding its own events ----
        replays = sorted({e.payload["replay_id"] for e in events if "replay_id" in e.payload})
        failed = sorted({e.payload["replay_id"] for e in events if e.topic == "verify.replay.failed"})
        groups = await page.eval_on_selector_all("details.replay", "els => els.map(e => e.dataset.replay)")
        assert groups == replays  # in log order, which is replay order here
        run_level = await page.eval_on_selector_all("#run-events li", "els => els.map(e => e.dataset.topic)")
        assert run_level == [e.topic for e in events if "replay_id" not in e.payload]
        assert f"· {len(run_level)} event(s) · " in (await page.text_content("#timeline h3") or "")
        for replay_id in replays:
            group = page.locator(f"details.replay[data-replay='{replay_id}']")
            topics = await group.locator("li").evaluate_all("els => els.map(e => e.dataset.topic)")
            assert topics == [e.topic for e in events if e.payload.get("replay_id") == replay_id]
            state = "failed" if replay_id in failed else "scored"
            assert await group.get_attribute("data-state") == state
        # Times to the millisecond, the step from the previous event, and each replay's total.
        times = await page.eval_on_selector_all("#timeline .time", "els => els.map(e => e.textContent)")
        assert len(times) == len(events) and all(CLOCK.match(t) for t in times), times[:3]
        first = page.locator(f"details.replay[data-replay='{replays[0]}']")
        steps = await first.locator(".step").evaluate_all("els => els.map(e => Number(e.dataset.ms))")
        total = float(await first.locator(".total").get_attribute("data-ms") or "nan")
        assert len(steps) == await first.locator("li").count() - 1 and abs(sum(steps) - total) < 1e-6
        assert re.search(r"\d+ event\(s\) · [\d.]+ (ms|s)", await first.locator("summary").first.text_content() or "")

        # ---- payloads on demand: the oracle's reply, the judge's score ----
        scored = next(r for r in replays if r not in failed)
        group = page.locator(f"details.replay[data-replay='{scored}']")
        await group.locator("summary").first.click()
        invoked = next(e for e in events if e.topic == "verify.replay.invoked" and e.payload["replay_id"] == scored)
        item = group.locator("li[data-topic='verify.replay.invoked']")
        assert "oracle replied in" in (await item.locator(".gist").text_content() or "")
        await item.locator("details.payload summary").click()
        shown = await item.locator("details.payload pre").text_content() or ""
        assert invoked.payload["reply"]["summary"] in shown and '"key_claims"' in shown
        item = group.locator("li[data-topic='verify.replay.scored']")
        await item.locator("details.payload summary").click()
        assert '"precision"' in (await item.locator("details.payload pre").text_content() or "")
        request = page.locator("#run-events li[data-topic='verify.run.requested']")
        await request.locator("details.payload summary").click()
        assert '"header_names"' in (await request.locator("pre").text_content() or "")
        await b.shot(page, "1-timeline-payloads")
        # What the payload view does to anything secret-looking: header maps become their names only.
        redacted = await page.evaluate(
            """() => import("/dashboard/lib.js").then(({ redact }) => JSON.stringify(redact({
                oracle: { header_names: ["X-Api-Key"], headers: { "X-Api-Key": "sk-live-123" } },
                oracle_headers: { Authorization: "Bearer abc.def" }, github_token: "ghp_secret", note: "kept",
                url: "https://bob:hunter2@oracle.example/reply" })))"""
        )
        assert "sk-live-123" not in redacted and "abc.def" not in redacted and "ghp_secret" not in redacted
        assert '"headers":["X-Api-Key"]' in redacted and '"oracle_headers":["Authorization"]' in redacted
        assert '"note":"kept"' in redacted and "hunter2" not in redacted and "(hidden)@oracle.example" in redacted

        # ---- the filter: only failed replays, then one topic ----
        await page.select_option("#timeline-state", "failed")
        assert await visible(page, "#replay-groups details.replay") == failed
        assert await page.is_hidden("#run-events")
        await page.click("#expand-all")
        await b.shot(page, "2-only-failed-replays")
        await page.select_option("#timeline-state", "")
        await page.select_option("#timeline-topic", "verify.replay.scored")
        await page.click("#expand-all")
        shown_topics = set(await visible(page, "#timeline li"))
        assert shown_topics == {"verify.replay.scored"}
        assert await visible(page, "#replay-groups details.replay") == [r for r in replays if r not in failed]
        await page.select_option("#timeline-topic", "")
        await page.select_option("#timeline-state", "open")  # every replay of this run ended
        await page.wait_for_selector("#timeline-none:not([hidden])")

        # ---- its certificate: signature, signing key, the API's verdict, the oracle ----
        await page.click("#certificate-link")
        await page.wait_for_selector("#verify-result [data-valid=true]")  # asked at once, no click needed
        cert_id = page.url.rsplit("/", 1)[1]
        cert = (await stack.client.get(f"{API}/certificates/{cert_id}")).json()
        keys = (await stack.client.get("/.well-known/echelon-keys.json")).json()["keys"]
        signature = cert["signature"]
        assert await page.text_content("#signature-algorithm") == signature["algorithm"] == "Ed25519"
        assert await page.get_attribute("#signature-key-id", "data-value") == signature["key_id"]
        assert await page.get_attribute("#signature-value", "data-value") == signature["value"]
        abbreviated = await page.text_content("#signature-value") or ""
        assert "…" in abbreviated and len(abbreviated) < len(signature["value"])
        key = next(k for k in keys if k["key_id"] == signature["key_id"])
        assert await page.get_attribute("#signing-public-key", "data-value") == key["public_key"]
        assert await page.get_attribute("#signature-check", "data-ok") == "true"
        await page.click("button[data-copies=signature-value]")
        await page.locator("#signature", has_text="copied").wait_for()
        assert await page.evaluate("navigator.clipboard.readText()") == signature["value"]
        assert await page.text_content("#oracle-type") == cert["oracle"]["type"] == "python"
        assert await page.text_content("#oracle-target") == cert["oracle"]["target"]
        assert "none known" in (await page.text_content("#oracle-fingerprint") or "")  # fake flows report none
        await b.shot(page, "3-certificate-signature-oracle")
    assert not b.problems, b.problems
    assert len(list(b.shots.glob("*.png"))) == 3
