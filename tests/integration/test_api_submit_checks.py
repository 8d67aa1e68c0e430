"""POST /runs reads its caller, body and Idempotency-Key without FastAPI's generic handler
(api/runs.py `read_submission`); its answers must be FastAPI's, byte for byte, for good and bad requests."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute

from api.deps import UserDep
from api.runs import IdempotencyKey, read_submission
from api.schemas import RunCreate
from echelon_platform.config import Settings
from tests.integration.test_api_support import app, http_client, options, token

__all__ = ["app", "options"]  # fixtures
GOOD = {
    "repo_url": "https://github.com/acme/widgets",
    "construct_id": "bench",
    "oracle_type": "python",
    "oracle_module": "pipeline_workers.oracles.sample",
    "oracle_callable": "summarise",
    "limit": 10,
}


async def _generic(body: RunCreate, user: UserDep, idempotency_key: IdempotencyKey = None) -> Response:
    return _echo(user.user_id, body, idempotency_key)


async def _lean(request: Request) -> Response:
    user, body, key = await read_submission(request)
    return _echo(user.user_id, body, key)


def _echo(user_id: str, body: RunCreate, key: str | None) -> Response:
    dumped = body.model_dump(mode="json", exclude={"github_token", "oracle_headers"})
    return Response(orjson.dumps({"user": user_id, "key": key, "body": dumped}), media_type="application/json")


class _LeanRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _lean


@pytest.fixture
def both_routes(app: FastAPI) -> FastAPI:
    """The real app (real services, its edge layer and error handlers) with the two readers side by side."""
    router = APIRouter()
    router.add_api_route("/generic", _generic, methods=["POST"])
    router.add_api_route("/lean", _generic, methods=["POST"], route_class_override=_LeanRoute)
    app.include_router(router)
    return app


JSON = {"content-type": "application/json"}
AUTH = {"authorization": "Bearer <token>"}
CASES: list[tuple[str, dict[str, str], bytes]] = [
    ("good", {**AUTH, **JSON}, orjson.dumps(GOOD)),
    ("good with a key", {**AUTH, **JSON, "idempotency-key": "k-1"}, orjson.dumps(GOOD)),
    ("no credentials", JSON, orjson.dumps(GOOD)),
    ("bad token", {"authorization": "Bearer nope", **JSON}, orjson.dumps(GOOD)),
    ("empty body", {**AUTH, **JSON}, b""),
    ("no content type", AUTH, orjson.dumps(GOOD)),
    ("text body", {**AUTH, "content-type": "text/plain"}, b"hello"),
    ("a list", {**AUTH, **JSON}, b"[1, 2]"),
    ("a string", {**AUTH, **JSON}, b'"run"'),
    ("missing fields", {**AUTH, **JSON}, b"{}"),
    ("unknown field", {**AUTH, **JSON}, orjson.dumps({**GOOD, "colour": "red"})),
    ("bad types", {**AUTH, **JSON}, orjson.dumps({**GOOD, "limit": "many", "oracle_type": "carrier pigeon"})),
    ("model rule", {**AUTH, **JSON}, orjson.dumps({**GOOD, "oracle_callable": None})),
    ("secret header", {**AUTH, **JSON}, orjson.dumps({**GOOD, "oracle_headers": {"X-Key": "a\nb"}})),
    ("bad key", {**AUTH, **JSON, "idempotency-key": "x" * 300}, orjson.dumps(GOOD)),
    ("bad key and body", {**AUTH, **JSON, "idempotency-key": "a b"}, b"{}"),
    ("json suffix type", {**AUTH, "content-type": "application/vnd.run+json"}, orjson.dumps(GOOD)),
]


@pytest.mark.parametrize(("name", "headers", "body"), CASES, ids=[c[0] for c in CASES])
async def test_lean_and_generic_answers_are_the_same(
    both_routes: FastAPI, settings: Settings, name: str, headers: dict[str, str], body: bytes
) -> None:
    bearer = token(settings, "ada")
    headers = {k: v.replace("<token>", bearer) for k, v in headers.items()}
    async with http_client(both_routes) as client:
        generic = await client.post("/generic", headers=headers, content=body)
        lean = await client.post("/lean", headers=headers, content=body)
    assert (lean.status_code, lean.json()) == (generic.status_code, generic.json()), name
