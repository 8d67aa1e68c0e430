"""Shared set-up for the dashboard's browser tests (no tests here): the API on a real uvicorn with the
coordinator projecting, runs seeded by fake flows (realistic events, no oracle, no judge), and Debian's
chromium driven by Playwright with every console error and page error collected."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from coordinator.assembly import coordinators_for
from echelon.fake_flow import FlowConfig, plan_run, publish_flows
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import Keyring, load_keyring, publish_keys
from echelon_platform.config import Settings
from tests.e2e.browser import CHROMIUM_FLAGS
from tests.helpers import wait_for
from tests.integration.test_api_support import API, auth, serve, token

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is in the test extra: pip install -e '.[test]'"
)

TIMEOUT_MS = 30_000
PHONE = {"width": 420, "height": 860}


@dataclass
class Stack:
    settings: Settings
    services: Services
    keyring: Keyring
    base: str
    client: httpx.AsyncClient
    start_writer: Callable[[], None]

    def token(self, user: str = "local") -> str:
        return token(self.settings, user)

    async def runs(self, user: str = "local", **params: Any) -> dict[str, Any]:
        response = await self.client.get(f"{API}/runs", params=params, headers=auth(self.settings, user))
        body: dict[str, Any] = response.json()
        return body

    async def seed(self, config: FlowConfig) -> None:
        """Publish fake flows and wait until the read model lists every one of them as ended."""
        before = (await self.runs(limit=1))["total"]
        await publish_flows(self.services.bus.publish_many, config, self.keyring.sign)
        await self.settled(before + config.runs)

    async def seed_dated(self, at: datetime, seed: int) -> str:
        """One fake run created at `at` (an older run); returns its id once the read model ended it."""
        before = (await self.runs(limit=1))["total"]
        events = plan_run(random.Random(seed), FlowConfig(replays=(2, 3), run_failure=0.0), self.keyring.sign, now=at)
        await self.services.bus.publish_many(events)
        await self.settled(before + 1)
        return events[0].correlation_id.removeprefix("run-")

    async def settled(self, runs: int) -> None:
        async def ended() -> bool:
            total = (await self.runs(limit=1))["total"]
            unfinished = 0
            for status in ("PENDING", "INGESTING", "INVOKING", "SCORING", "CERTIFYING"):
                unfinished += (await self.runs(limit=1, status=status))["total"]
            return total == runs and unfinished == 0

        await wait_for(ended, timeout=60, interval=0.2, what=f"{runs} fake runs to end")


@asynccontextmanager
async def dashboard_stack(settings: Settings, *, logging: bool = True) -> AsyncIterator[Stack]:
    """The API on uvicorn over real NATS/Postgres/Redis; the coordinator (the log's writer) runs from the
    start, or — `logging=False` — from `stack.start_writer()`, to hold the log behind the stream."""
    async with Services(settings, name="dashboard-e2e") as services, coordinators_for(services, settings) as writer:
        keyring = load_keyring(settings)
        await publish_keys(services.store, keyring)
        tasks: list[asyncio.Task[None]] = []

        def start_writer() -> None:
            tasks.append(asyncio.create_task(writer.run()))

        if logging:
            start_writer()
        try:
            async with (
                serve(create_app(settings, services)) as address,
                httpx.AsyncClient(base_url=f"http://{address}") as client,
            ):
                yield Stack(settings, services, keyring, f"http://{address}", client, start_writer)
        finally:
            writer.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)


@dataclass
class Browser:
    context: Any
    shots: Path
    problems: list[str] = field(default_factory=list)

    async def page(self, viewport: dict[str, int] | None = None) -> Any:
        page = await self.context.new_page()
        if viewport is not None:
            await page.set_viewport_size(viewport)
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: self.note(f"page error: {exc}"))
        page.on("console", lambda msg: self.note(f"console: {msg.text}") if msg.type == "error" else None)
        return page

    def note(self, problem: str) -> None:
        print(problem)  # shown with a failure at any later step, not only by the final assertion
        self.problems.append(problem)

    async def shot(self, page: Any, name: str) -> None:
        await page.screenshot(path=self.shots / f"{name}.png", full_page=True)


@asynccontextmanager
async def browser(chromium: str, tmp_path: Path) -> AsyncIterator[Browser]:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield Browser(await browser.new_context(), shots)
        finally:
            await browser.close()


async def sign_in(page: Any, base: str, user_token: str) -> None:
    await page.goto(f"{base}/#/signin")
    await page.fill("#token", user_token)
    await page.click("#signin")
    await page.wait_for_selector("main[data-view=runs]")


async def fits(page: Any) -> int:
    """The page's scroll width: at most the viewport's when nothing overflows sideways."""
    width: int = await page.evaluate("document.documentElement.scrollWidth")
    return width
