"""POST /runs is answered from the edge layer, past FastAPI's own layers (api/direct.py): its answers must be
the framework's, for good and bad requests, on the real app (real NATS, Postgres and Redis)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from api import runs
from api.direct import DirectRoutes
from api.options import ApiOptions
from echelon_platform.config import Settings
from echelon_platform.errors import ConfigError
from tests.integration.test_api_support import API, app, http_client, options, token

__all__ = ["app", "options"]  # fixtures
GOOD = {
    "repo_url": "https://github.com/acme/widgets",
    "construct_id": "direct",
    "oracle_type": "python",
    "oracle_module": "pipeline_workers.oracles.sample",
    "oracle_callable": "summarise",
    "limit": 10,
}
FRAMEWORK = "/framework/runs"


@pytest.fixture
def both_paths(app: FastAPI) -> FastAPI:
    """The real app, with POST /runs's own route also served by the framework (not direct) at /framework/runs."""
    router = APIRouter()
    router.add_api_route(FRAMEWORK, runs.create_run, methods=["POST"], route_class_override=runs.SubmitRunRoute)
    app.include_router(router)
    return app


def _answer(response: httpx.Response) -> tuple[int, Any, dict[str, str | None]]:
    body = response.json()
    if response.status_code in (200, 201):  # a new run each time: its id and time differ
        body = {**body, "run_id": len(body["run_id"]), "created_at": body["created_at"][-1]}
    headers = {name: response.headers.get(name) for name in ("content-type", "www-authenticate", "retry-after")}
    return response.status_code, body, headers


async def _both(client: httpx.AsyncClient, headers: dict[str, str], body: bytes) -> tuple[Any, Any]:
    direct = await client.post(f"{API}/runs", headers=headers, content=body)
    framework = await client.post(FRAMEWORK, headers=headers, content=body)
    assert direct.headers["x-request-id"] and framework.headers["x-request-id"]
    return _answer(direct), _answer(framework)


JSON = {"content-type": "application/json"}
CASES: list[tuple[str, dict[str, str], bytes]] = [
    ("good", JSON, orjson.dumps(GOOD)),
    ("no credentials", {"authorization": "", **JSON}, orjson.dumps(GOOD)),
    ("bad token", {"authorization": "Bearer nope", **JSON}, orjson.dumps(GOOD)),
    ("missing fields", JSON, b"{}"),
    ("bad types", JSON, orjson.dumps({**GOOD, "limit": "many"})),
    ("not a repository", JSON, orjson.dumps({**GOOD, "repo_url": "ftp://example.com/widgets"})),
    ("bad weights", JSON, orjson.dumps({**GOOD, "weights": {"precision": 0, "recall": 0, "reply_accuracy": 0}})),
    ("callable not allowed", JSON, orjson.dumps({**GOOD, "oracle_module": "os", "oracle_callable": "system"})),
    ("bad key", {**JSON, "idempotency-key": "a b"}, orjson.dumps(GOOD)),
]


@pytest.mark.parametrize(("name", "headers", "body"), CASES, ids=[c[0] for c in CASES])
async def test_direct_and_framework_answers_are_the_same(
    both_paths: FastAPI, settings: Settings, name: str, headers: dict[str, str], body: bytes
) -> None:
    headers = {"authorization": f"Bearer {token(settings, 'ada')}", **headers}
    if not headers["authorization"]:
        del headers["authorization"]
    async with http_client(both_paths) as client:
        direct, framework = await _both(client, headers, body)
    assert direct == framework, name
    assert direct[0] in (201, 401, 422), name


async def test_a_repeated_key_is_answered_the_same_both_ways(both_paths: FastAPI, settings: Settings) -> None:
    auth = {"authorization": f"Bearer {token(settings, 'ada')}", **JSON}
    async with http_client(both_paths) as client:
        first = [
            await client.post(f"{API}/runs", headers={**auth, "idempotency-key": "d-1"}, json=GOOD),
            await client.post(FRAMEWORK, headers={**auth, "idempotency-key": "f-1"}, json=GOOD),
        ]
        again = [
            await client.post(f"{API}/runs", headers={**auth, "idempotency-key": "d-1"}, json=GOOD),
            await client.post(FRAMEWORK, headers={**auth, "idempotency-key": "f-1"}, json=GOOD),
        ]
        other_body = {**GOOD, "limit": 3}
        refused = await _both(client, {**auth, "idempotency-key": "d-1"}, orjson.dumps(other_body))
    assert [r.status_code for r in first] == [201, 201] and [r.status_code for r in again] == [200, 200]
    assert [r.json()["run_id"] for r in again] == [r.json()["run_id"] for r in first]
    assert refused[0][0] == 422 and refused[0][1] == {
        "detail": "this Idempotency-Key was already used for a different request; use a new key for a new run"
    }
    # /framework/runs did not see key d-1 with the first body: the same key names the same run for a user,
    # whichever path, so it is refused there too.
    assert refused[1] == refused[0]


@pytest.mark.parametrize("options", [ApiOptions(runs_per_minute=1)])
async def test_the_rate_limit_is_answered_the_same_both_ways(both_paths: FastAPI, settings: Settings) -> None:
    answers = []
    async with http_client(both_paths) as client:
        for user, path in (("ada", f"{API}/runs"), ("bob", FRAMEWORK)):
            auth = {"authorization": f"Bearer {token(settings, user)}"}
            answers.append([_answer(await client.post(path, headers=auth, json=GOOD)) for _ in range(2)])
    assert answers[0] == answers[1]
    assert [a[0] for a in answers[0]] == [201, 429] and answers[0][1][2]["retry-after"] is not None


def test_only_a_route_that_replaced_the_generic_handler_goes_direct(app: FastAPI) -> None:
    direct = DirectRoutes.of_kind(app, runs.router, runs.SubmitRunRoute)
    post = {"type": "http", "method": "POST", "path": f"{API}/runs", "root_path": ""}
    assert direct.app_for(post) is not None
    assert direct.app_for({**post, "method": "GET"}) is None
    assert direct.app_for({**post, "path": f"{API}/runs/"}) is None
    assert direct.app_for({**post, "root_path": "/mounted"}) is None  # the router strips it: left to it
    plain = next(r for r in runs.router.routes if isinstance(r, APIRoute) and type(r) is APIRoute)
    with pytest.raises(ConfigError, match="generic handler"):
        DirectRoutes(app, [plain])
