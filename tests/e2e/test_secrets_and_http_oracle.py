"""An HTTP oracle behind a secret header: the run works, and the secret is nowhere it must not be."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline_workers.oracles.sample import summarise
from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import run_body
from tests.helpers import wait_for

ORACLE_KEY = "sk-oracle-PLANTED-7f3a9c1e5b"
GITHUB_TOKEN = "ghp_PLANTEDtoken0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def remote_oracle() -> AsyncIterator[str]:
    """A stand-in for a construct hosted elsewhere: it answers only with the right key."""

    async def answer(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {ORACLE_KEY}":
            return JSONResponse({"error": "unauthorised"}, status_code=401)
        return JSONResponse(summarise(await request.json()))

    async def garbage(request: Request) -> Response:
        return Response("<html>502 Bad Gateway</html>", media_type="text/html")

    app = Starlette(
        routes=[Route("/summarise", answer, methods=["POST"]), Route("/garbage", garbage, methods=["POST"])]
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, what="fake oracle server")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_secrets_reach_the_oracle_and_nothing_else(
    running: Running, sample_repo: Path, remote_oracle: str
) -> None:
    body: dict[str, Any] = run_body(
        sample_repo,
        oracle_type="http",
        oracle_url=f"{remote_oracle}/summarise",
        oracle_headers={"Authorization": f"Bearer {ORACLE_KEY}"},
        github_token=GITHUB_TOKEN,
        limit=4,
    )
    del body["oracle_module"], body["oracle_callable"]
    with structlog.testing.capture_logs() as logs:
        response = await running.api.post("/api/v1/verification/runs", json=body, headers=running.auth())
        assert response.status_code == 201, response.text
        run_id = response.json()["run_id"]
        view = await running.wait_status(run_id, "COMPLETED", "FAILED")
    assert view["status"] == "COMPLETED", view  # so the oracle did receive its key

    conn = await asyncpg.connect(running.settings.database_url)
    try:
        log_text = await conn.fetchval("SELECT string_agg(payload::text || coalesce(causation_id, ''), '') FROM events")
    finally:
        await conn.close()
    redis = running.services.read_models.redis
    values = []
    async for key in redis.scan_iter(match=f"{running.settings.redis_prefix}*"):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            values.append((await redis.get(key)) or b"")
        elif kind == "hash":
            values.extend((await redis.hgetall(key)).values())
    everything = [log_text, repr(logs), *(v.decode(errors="replace") for v in values)]
    for secret in (ORACLE_KEY, GITHUB_TOKEN):
        assert not any(secret in text for text in everything)
    # The encrypted copy is gone once the run ended.
    await wait_for(lambda: _gone(running, run_id), what="run secrets deleted after the run ended")


async def _gone(running: Running, run_id: str) -> bool:
    return not await running.services.secrets.exists(run_id)


async def test_an_oracle_answering_garbage_fails_its_replays_with_a_reason(
    running: Running, sample_repo: Path, remote_oracle: str
) -> None:
    body = run_body(sample_repo, oracle_type="http", oracle_url=f"{remote_oracle}/garbage", limit=2)
    del body["oracle_module"], body["oracle_callable"]
    response = await running.api.post("/api/v1/verification/runs", json=body, headers=running.auth())
    view = await running.wait_status(response.json()["run_id"], "COMPLETED", "FAILED")
    assert view["status"] == "FAILED"
    assert "All replays failed" in str(view["error"]) and "JSON" in str(view["error"])
