"""Measure the dashboard in a real browser (Debian's chromium via Playwright) and print JSON.

    python scripts/measure_dashboard.py [--events 50] [--interval-ms 100] [--loads 10]

1. Page load: `--loads` fresh loads of `/#/runs` (signed in, one run listed): the navigation's load event
   (HTML + CSS + the ES modules), and the time until the runs table shows the run (data fetched, rendered).
2. Event → dashboard update: with the runs list open and following the stream, `--events` replay
   outcomes of that run are published one every `--interval-ms`; each moves the run's progress bar. The
   page records, when it has updated the row for an event, `performance.timeOrigin + performance.now()`
   minus the envelope's timestamp (taken at publish, same machine clock): publish → JetStream → API's
   ordered consumer → WebSocket → DOM. Reported as p50 / p99 / max.

The API runs as deployed (its own uvicorn process); the coordinator projects meanwhile. Uses the configured
NATS_URL/DATABASE_URL/REDIS_URL, else embedded servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reuse the test factories and browser set-up
from playwright.async_api import Page, async_playwright

from api.auth import issue_jwt
from coordinator.assembly import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import ReplayScored, RunIngested, make_event
from scripts.benchlib import isolated, server_env, servers, uvicorn_process
from tests.e2e.browser import CHROMIUM_FLAGS, chromium_path
from tests.factories import requested, score

USER = "measure"
RUN_ID = "MEASURE01"


def note(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else float("nan")


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": pct(values, 0.5),
        "p99_ms": pct(values, 0.99),
        "max_ms": round(max(values), 2) if values else float("nan"),
        "mean_ms": round(statistics.fmean(values), 2) if values else float("nan"),
    }


async def page_loads(page: Page, base: str, loads: int) -> dict[str, Any]:
    load_ms: list[float] = []
    data_ms: list[float] = []
    for _ in range(loads):
        await page.goto("about:blank")
        started = time.perf_counter()
        await page.goto(f"{base}/#/runs", wait_until="load")
        load_ms.append(
            await page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")  # since navigation
        )
        await page.wait_for_selector(f"tr[data-run='{RUN_ID}']")
        data_ms.append((time.perf_counter() - started) * 1000)
    return {"load_event": summary(load_ms), "runs_table_shown": summary(data_ms)}


async def event_updates(page: Page, services: Services, events: int, interval_s: float) -> dict[str, Any]:
    await page.wait_for_selector("#live.on")
    await services.bus.publish(
        make_event(RunIngested(run_id=RUN_ID, total=events, ground_truth_source="github", commit_range="a..b"))
    )
    await page.wait_for_selector(f"tr[data-run='{RUN_ID}'] [data-progress='0/{events}']")
    await page.evaluate("window.echelonMetrics = { shown: [] }")
    for i in range(events):
        replay_id = f"{RUN_ID}-{i:04d}"
        await services.bus.publish(
            make_event(ReplayScored(run_id=RUN_ID, replay_id=replay_id, score=score(replay_id, i)))
        )
        await asyncio.sleep(interval_s)  # a steady, human-scale event rate (not a load test)
    await page.wait_for_selector(f"tr[data-run='{RUN_ID}'] [data-progress='{events}/{events}']", timeout=30_000)
    shown: list[dict[str, Any]] = await page.evaluate("window.echelonMetrics.shown")
    delays = [s["delayMs"] for s in shown if s["topic"] == "verify.replay.scored"]
    return {"events": events, "interval_ms": interval_s * 1000, **summary(delays)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--interval-ms", type=float, default=100)
    parser.add_argument("--loads", type=int, default=10)
    args = parser.parse_args()
    chromium = chromium_path()
    if chromium is None:
        raise SystemExit("chromium is needed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        base_settings = Settings()
        async with servers(base_settings, Path(tmp)) as (urls, embedded):
            settings = await isolated(base_settings, urls)
            result: dict[str, Any] = {"cpus": os.cpu_count(), "embedded_servers": embedded}
            async with (
                Services(settings, name="measure-dashboard") as services,
                coordinator_for(services, settings) as coordinator,
            ):
                projecting = asyncio.create_task(coordinator.run())
                port = 18000 + os.getpid() % 1000
                async with uvicorn_process("api.asgi:build_app", port, server_env(settings)) as api:
                    await services.bus.publish(requested(RUN_ID, USER))
                    token = issue_jwt(USER, settings.jwt_secret.get_secret_value())
                    async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}) as c:
                        for _ in range(200):  # projected: listed by GET /runs
                            if (await c.get("/api/v1/verification/runs")).json()["total"]:
                                break
                            await asyncio.sleep(0.05)
                    async with async_playwright() as pw:
                        context = await pw.chromium.launch_persistent_context(
                            str(Path(tmp) / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
                        )
                        page = await context.new_page()
                        await page.goto(f"{api}/#/signin")
                        await page.evaluate("t => sessionStorage.setItem('echelon.token', t)", token)
                        note("page loads")
                        result["page_load"] = await page_loads(page, api, args.loads)
                        note("event → dashboard updates")
                        result["event_to_dom"] = await event_updates(
                            page, services, args.events, args.interval_ms / 1000
                        )
                        await context.close()
                coordinator.stop()
                await projecting
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
