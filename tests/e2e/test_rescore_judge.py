"""Rescoring a run with another judge: the run was scored by the offline judge, the rescore by an Anthropic
model (a stand-in for the Messages API on a real port), from the replies in the log, with no oracle call."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from echelon_platform.config import Settings
from echelon_platform.domain.events import JudgeCalled, payload_as
from pipeline_workers.rederive import rederive_from_store
from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import certificate_of, run_body
from tests.helpers import wait_for

RUNS = "/api/v1/verification/runs"
CLAIMS = re.compile(r"<key_claims>\n(.*?)\n</key_claims>", re.S)
judge_requests: list[dict[str, Any]] = []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _message(text: str) -> dict[str, Any]:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1500, "output_tokens": 200, "cache_creation_input_tokens": 0},
    }


@pytest.fixture
async def anthropic_api() -> AsyncIterator[str]:
    """Messages API stand-in: a strict judge that supports only the first claim and calls the answer partial."""

    async def messages(request: Request) -> Response:
        body = await request.json()
        judge_requests.append(body)
        prompt = body["messages"][0]["content"]
        text = prompt if isinstance(prompt, str) else "".join(part.get("text", "") for part in prompt)
        found = CLAIMS.search(text)
        claims = [] if found is None or found.group(1) == "(no claims)" else found.group(1).splitlines()
        verdict = {
            "claims": [{"claim": c, "supported": i == 0} for i, c in enumerate(claims)],
            "changes": [{"change": "the main change", "surfaced": True}, {"change": "a detail", "surfaced": False}],
            "score": 0.5,
        }
        return JSONResponse(_message(json.dumps(verdict)))

    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, what="fake Messages API")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
async def settings(settings: Settings, anthropic_api: str) -> Settings:
    # The stages score with the offline judge; an Anthropic model is configured but used only when asked for.
    return settings.model_copy(
        update={
            "judges": ["offline"],
            "anthropic_api_key": SecretStr("sk-ant-api03-test-Zx9YwV8uT7sR6qP5oN4mL3kJ2iH1gF0eD"),
            "anthropic_base_url": anthropic_api,
        }
    )


async def test_rescore_with_another_judge(running: Running, sample_repo: Path) -> None:
    judge_requests.clear()
    response = await running.api.post(RUNS, json=run_body(sample_repo, limit=3), headers=running.auth())
    first = await certificate_of(running, response.json()["run_id"])
    assert first.scoring_model == "offline-lexical-v1" and judge_requests == []

    admin = {"Authorization": f"Bearer {running.token('root', admin=True)}"}
    ask = {"methodology_version": "v1", "judge": "anthropic:claude-haiku-4-5"}
    created = await running.api.post(f"{RUNS}/{first.run_id}/rescore", json=ask, headers=admin)
    assert created.status_code == 201, created.text
    second = await certificate_of(running, created.json()["run_id"])

    # Scored by the other judge, once per replay (no follow-up question: the logged one is reused).
    assert second.rescored_from == first.certificate_id
    assert second.scoring_model == "anthropic:claude-haiku-4-5" and second.mixed_judges is False
    assert len(judge_requests) == second.replay_count == first.replay_count
    assert all(s.reply_accuracy == 0.5 for s in second.individual_scores)
    assert all(s.claims_supported == min(1, s.claims_total) for s in second.individual_scores)
    assert second.composite_score != first.composite_score
    assert all(s.input_tokens == 1500 and s.cost_usd > 0 for s in second.individual_scores)
    events = await running.services.store.run_events(second.run_id)
    calls = [payload_as(e, JudgeCalled) for e in events if e.topic == "verify.judge.called"]
    assert {(c.judge, c.purpose) for c in calls} == {("anthropic:claude-haiku-4-5", "score")}
    again = await rederive_from_store(running.services.store, second.certificate_id)
    assert again.same, again.differences
