"""A browser app served from a second local origin calls the API (list, submit, certificate) and opens its
WebSocket: real chromium, two real uvicorn servers on different ports and host names, the whole pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from api.app import create_app
from api.options import ApiOptions
from tests.e2e.browser import CHROMIUM_FLAGS
from tests.e2e.conftest import Running
from tests.integration.test_api_support import serve

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is in the test extra")

# What a single-page app of another origin does: every call carries Authorization (so each is preflighted),
# the submission an Idempotency-Key too.
PAGE = """<!doctype html><meta charset="utf-8"><title>other origin</title><pre id="out">working</pre>
<script type="module">
const params = new URLSearchParams(location.hash.slice(1));
const api = params.get("api"), auth = {Authorization: `Bearer ${params.get("token")}`};
const V = `${api}/api/v1/verification`;
const json = async (r) => { if (!r.ok) throw new Error(`${r.status} ${await r.text()}`); return r.json(); };
try {
  const before = await json(await fetch(`${V}/runs?limit=5`, {headers: auth}));
  const created = await json(await fetch(`${V}/runs`, {method: "POST",
    headers: {...auth, "Content-Type": "application/json", "Idempotency-Key": "cross-origin-1"},
    body: JSON.stringify({repo_url: "sample", construct_id: "spa-construct", oracle_type: "python",
      oracle_module: "pipeline_workers.oracles.sample", oracle_callable: "summarise", limit: 2})}));
  let run;
  for (let i = 0; i < 600; i++) {
    run = await json(await fetch(`${V}/runs/${created.run_id}`, {headers: auth}));
    if (run.status === "COMPLETED" || run.status === "FAILED") break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const cert = await json(await fetch(`${V}/certificates/${run.certificate_id}`));
  const socket = await new Promise((resolve) => {
    const ws = new WebSocket(`${api.replace("http", "ws")}/api/v1/stream`);
    ws.onopen = () => { ws.close(); resolve("open"); };
    ws.onerror = () => resolve("refused");
  });
  window.result = {listed: before.total ?? before.runs?.length ?? 0, status: run.status,
    certificate: cert.certificate_id ?? cert.id, composite: cert.composite_score, socket};
} catch (error) { window.result = {error: String(error)}; }
document.getElementById("out").textContent = JSON.stringify(window.result);
</script>"""


async def test_a_page_on_another_origin_lists_submits_and_reads_the_certificate(
    running: Running, chromium: str, tmp_path: Path
) -> None:
    api_app = create_app(running.settings, running.services, options=ApiOptions(runs_per_minute=100))
    page_app = Starlette(routes=[Route("/", lambda _: HTMLResponse(PAGE))])
    problems: list[str] = []
    async with serve(api_app) as api_address, serve(page_app) as page_address, playwright_api.async_playwright() as pw:
        # Another port and another host name: a different origin on both counts.
        page_origin = f"http://localhost:{page_address.rsplit(':', 1)[1]}"
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = await context.new_page()
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            await page.goto(f"{page_origin}/#api=http://{api_address}&token={running.token('spa-user')}")
            await page.wait_for_function("window.result !== undefined", timeout=90_000)
            result: dict[str, Any] = await page.evaluate("window.result")
            await page.screenshot(path=tmp_path / "cross-origin.png")
        finally:
            await context.close()
    assert "error" not in result, (result, problems)
    assert result["status"] == "COMPLETED" and result["certificate"], result
    assert result["socket"] == "open", result
    assert not [p for p in problems if "CORS" in p], problems
