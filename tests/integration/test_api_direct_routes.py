"""POST /runs is answered from the edge layer, past FastAPI's own layers (api/direct.py): on the real app (real
NATS, Postgres and Redis) its answers and access lines must be the framework's, for good and bad requests,
and the framework's router must not be needed for it."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api import runs
from api.direct import DirectRoutes
from api.edge import Edge
from api.options import ApiOptions
from echelon_platform.config import Settings
from echelon_platform.errors import BusError, ConfigError
from tests.integration.test_api_logging import log_lines
from tests.integration.test_api_support import API, app, options, running, token

__all__ = ["app", "log_lines", "options"]  # fixtures
GOOD = {
    "repo_url": "https://github.com/acme/widgets",
    "construct_id": "direct",
    "oracle_type": "python",
    "oracle_module": "pipeline_workers.oracles.sample",
    "oracle_callable": "summarise",
    "limit": 10,
}
RUNS = f"{API}/runs"
JSON = {"content-type": "application/json"}


def edge_of(app: FastAPI) -> Edge:
    layer: Any = app.middleware_stack
    while not isinstance(layer, Edge):
        layer = layer.app
    return layer


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, Edge]]:
    async with running(app):
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)  # a 500 is an answer here
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            await client.get("/healthz")  # the app builds its middleware stack
            yield client, edge_of(app)


def _answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], Any]:
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in ("x-request-id", "date")]
    body: Any = response.content
    if response.status_code in (200, 201):  # a new run each time: its id and time differ
        body = sorted(response.json())
    return response.status_code, headers, body


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    """The log lines written since the last call, without what differs from request to request."""
    lines = [orjson.loads(line) for line in buffer.getvalue().splitlines()]
    buffer.seek(0)
    buffer.truncate()
    varying = ("request_id", "duration_ms", "timestamp", "eventId", "correlationId", "seq", "exception", "runId")
    return [{k: v for k, v in line.items() if k not in varying} for line in lines]


def _bodies(settings: Settings) -> list[tuple[str, dict[str, str], bytes]]:
    auth = {"authorization": f"Bearer {token(settings, 'ada')}"}
    return [
        ("good", {**auth, **JSON}, orjson.dumps(GOOD)),
        ("charset", {**auth, "content-type": "application/json; charset=utf-8"}, orjson.dumps(GOOD)),
        ("no credentials", JSON, orjson.dumps(GOOD)),
        ("bad token", {"authorization": "Bearer nope", **JSON}, orjson.dumps(GOOD)),
        ("empty body", {**auth, **JSON}, b""),
        ("a list", {**auth, **JSON}, b"[1]"),
        ("missing fields", {**auth, **JSON}, b"{}"),
        ("bad types", {**auth, **JSON}, orjson.dumps({**GOOD, "limit": "many"})),
        ("not a repository", {**auth, **JSON}, orjson.dumps({**GOOD, "repo_url": "ftp://example.com/widgets"})),
        ("bad weights", {**auth, **JSON}, orjson.dumps({**GOOD, "weights": {"precision": 0, "recall": 0}})),
        ("callable not allowed", {**auth, **JSON}, orjson.dumps({**GOOD, "oracle_module": "os"})),
        ("bad key", {**auth, **JSON, "idempotency-key": "a b"}, orjson.dumps(GOOD)),
    ]


async def _both_ways(client: httpx.AsyncClient, edge: Edge, send: Callable[[], Awaitable[httpx.Response]]) -> Any:
    """One request answered directly, then the same through the framework (the edge without direct routes)."""
    direct = await send()
    saved, edge.direct = edge.direct, None
    try:
        framework = await send()
    finally:
        edge.direct = saved
    return _answer(direct), _answer(framework)


async def test_answers_and_access_lines_are_the_framework_s(
    app: FastAPI, settings: Settings, log_lines: io.StringIO
) -> None:
    async with served(app) as (client, edge):
        for name, headers, body in _bodies(settings):
            _lines(log_lines)
            direct = _answer(await client.post(RUNS, headers=headers, content=body))
            direct_lines = _lines(log_lines)
            saved, edge.direct = edge.direct, None
            try:
                framework = _answer(await client.post(RUNS, headers=headers, content=body))
            finally:
                edge.direct = saved
            framework_lines = _lines(log_lines)
            assert direct == framework, name
            assert direct_lines == framework_lines, name
            assert [line["route"] for line in direct_lines if line["event"] == "http.request"] == [RUNS], name


@pytest.mark.parametrize(
    ("fault", "status"), [(RuntimeError("a bug"), 500), (BusError("NATS is unreachable"), 503)], ids=["500", "503"]
)
async def test_an_exception_is_answered_as_by_the_framework(
    app: FastAPI, settings: Settings, monkeypatch: pytest.MonkeyPatch, fault: Exception, status: int
) -> None:
    """An error raised in the route (injected: the route's own call fails) reaches the same handlers."""

    async def failing(*_: Any, **__: Any) -> Response:
        raise fault

    monkeypatch.setattr(runs, "create_run", failing)
    auth = {"authorization": f"Bearer {token(settings, 'ada')}"}
    async with served(app) as (client, edge):
        direct, framework = await _both_ways(client, edge, lambda: client.post(RUNS, headers=auth, json=GOOD))
    assert direct == framework and direct[0] == status


async def test_a_repeated_key_is_answered_the_same_both_ways(app: FastAPI, settings: Settings) -> None:
    auth = {"authorization": f"Bearer {token(settings, 'ada')}"}
    async with served(app) as (client, edge):
        first = await client.post(RUNS, headers={**auth, "idempotency-key": "r-1"}, json=GOOD)
        again = await _both_ways(
            client, edge, lambda: client.post(RUNS, headers={**auth, "idempotency-key": "r-1"}, json=GOOD)
        )
        other = await _both_ways(
            client,
            edge,
            lambda: client.post(RUNS, headers={**auth, "idempotency-key": "r-1"}, json={**GOOD, "limit": 3}),
        )
    assert first.status_code == 201 and again[0] == again[1] and again[0][0] == 200
    assert other[0] == other[1] and other[0][0] == 422


@pytest.mark.parametrize("options", [ApiOptions(runs_per_minute=1)])
async def test_the_rate_limit_is_answered_the_same_both_ways(app: FastAPI, settings: Settings) -> None:
    async with served(app) as (client, edge):
        auth = {"authorization": f"Bearer {token(settings, 'ada')}"}
        assert (await client.post(RUNS, headers=auth, json=GOOD)).status_code == 201
        direct, framework = await _both_ways(client, edge, lambda: client.post(RUNS, headers=auth, json=GOOD))
    assert direct == framework and direct[0] == 429 and "retry-after" in dict(direct[1])


async def test_post_runs_does_not_go_through_the_router(app: FastAPI, settings: Settings) -> None:
    """With the framework's router replaced by one that answers 599, POST /runs is still answered (and only
    it: the same request without a direct route, or another route, meets the stand-in)."""

    async def stand_in(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    auth = {"authorization": f"Bearer {token(settings, 'ada')}"}
    async with served(app) as (client, edge):
        layer: Any = edge.app
        while layer.app is not app.router:  # the layer holding the router (FastAPI's exit-stack middleware)
            layer = layer.app
        router: ASGIApp = layer.app
        layer.app = stand_in
        try:
            answered = await client.post(RUNS, headers=auth, json=GOOD)
            other = await client.get(f"{RUNS}/{answered.json()['run_id']}", headers=auth)
            saved, edge.direct = edge.direct, None
            framework = await client.post(RUNS, headers=auth, json=GOOD)
            edge.direct = saved
        finally:
            layer.app = router
    assert answered.status_code == 201
    assert (other.status_code, framework.status_code) == (599, 599)


def _with_route(path: str, endpoint: Callable[..., Any], route_class: type[APIRoute], **kwargs: Any) -> APIRouter:
    router = APIRouter()
    router.add_api_route(path, endpoint, methods=["POST"], route_class_override=route_class, **kwargs)
    return router


async def _plain(request: Request) -> Response:
    return Response(b"{}")


def test_only_a_route_that_can_skip_the_framework_goes_direct(app: FastAPI) -> None:
    direct = DirectRoutes.of_kind(app, runs.router, runs.SubmitRunRoute)
    direct.build()
    post = {"type": "http", "method": "POST", "path": RUNS, "root_path": ""}
    assert direct.app_for(post) is not None
    assert direct.app_for({**post, "method": "GET"}) is None
    assert direct.app_for({**post, "path": f"{RUNS}/"}) is None
    assert direct.app_for({**post, "root_path": "/behind"}) is None  # the router strips it first: left to it
    # FastAPI's generic handler needs the exit stacks.
    plain = next(r for r in runs.router.routes if type(r) is APIRoute)
    with pytest.raises(ConfigError, match="generic handler"):
        DirectRoutes(app, [plain])
    # A route the app serves under a prefix, or with a body limit of its own.
    elsewhere = FastAPI()
    prefixed = _with_route("/runs", runs.create_run, runs.SubmitRunRoute)
    elsewhere.include_router(prefixed, prefix="/v2")
    with pytest.raises(ConfigError, match="serves this route at /v2/runs"):
        DirectRoutes.of_kind(elsewhere, prefixed, runs.SubmitRunRoute)
    limited = _with_route("/runs", runs.create_run, runs.SubmitRunRoute, max_body_size=4)
    with pytest.raises(ConfigError, match="body or form limit"):
        DirectRoutes.of_kind(FastAPI(), limited, runs.SubmitRunRoute)
