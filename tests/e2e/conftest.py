"""A whole running service for end-to-end tests: API (in-process ASGI), coordinator and stage workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.auth import issue_jwt
from coordinator.assembly import coordinators_for
from coordinator.writer import StateCoordinator
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.pipeline import STAGES, Pipeline
from tests.e2e.browser import chromium_path
from tests.helpers import wait_for


@dataclass
class Running:
    settings: Settings
    services: Services
    api: httpx.AsyncClient
    coordinator: StateCoordinator
    tasks: dict[str, asyncio.Task[object]] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)

    def token(self, user: str = "alice", *, admin: bool = False) -> str:
        return issue_jwt(user, self.settings.jwt_secret.get_secret_value(), admin=admin)

    def auth(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    async def start_stage(self, name: str, stack: AsyncExitStack, *, key: str | None = None) -> None:
        pipeline = await stack.enter_async_context(Pipeline(self.services, self.settings, stages=(name,)))
        key = key or name
        self.pipelines[key] = pipeline
        self.tasks[key] = asyncio.create_task(pipeline.run(watchdog=False))

    async def wait_status(self, run_id: str, *statuses: str, timeout: float = 60) -> dict[str, object]:
        async def probe() -> dict[str, object] | None:
            response = await self.api.get(f"/api/v1/verification/runs/{run_id}", headers=self.auth())
            body: dict[str, object] = response.json()
            return body if body.get("status") in statuses else None

        return await wait_for(probe, timeout=timeout, what=f"run {run_id} to reach {statuses}")


@pytest.fixture
async def sample_repo(tmp_path: Path) -> Path:
    return await materialise_sample_repo(tmp_path / "sample-repo")


@pytest.fixture
async def running(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    """The whole service; `@pytest.mark.parametrize("running", [{...}], indirect=True)` overrides settings."""
    overrides = getattr(request, "param", {})
    settings = settings.model_copy(update={"ack_wait_s": 2.0, "max_deliver": 3, **overrides})
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(Services(settings, name="e2e"))
        writers = await stack.enter_async_context(coordinators_for(services, settings))
        coordinator = writers.members[0]
        app = create_app(settings, services)
        await stack.enter_async_context(app.router.lifespan_context(app))
        api = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        )
        world = Running(settings, services, api, coordinator)
        world.tasks["coordinator"] = asyncio.create_task(writers.run())
        for stage in STAGES:
            await world.start_stage(stage, stack)
        try:
            yield world
        finally:
            writers.stop()
            for pipeline in world.pipelines.values():
                pipeline.stop()
            await asyncio.wait_for(asyncio.gather(*world.tasks.values(), return_exceptions=True), 30)


@pytest.fixture
def chromium() -> str:
    """Debian's chromium for the browser tests (Playwright downloads no browser here)."""
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium found (scripts/_env.sh installs Debian's `chromium` with apt-get when it can)")
    return path
