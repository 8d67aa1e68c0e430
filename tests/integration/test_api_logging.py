"""JSON logs: one line per request with its request id, and the event fields where an event is published."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import orjson
import pytest
import structlog
from fastapi import FastAPI

from echelon_platform.config import Settings
from echelon_platform.log_config import configure_logging
from tests.integration.test_api_runs import RUN
from tests.integration.test_api_support import API, app, auth, http_client, options

__all__ = ["app", "options"]  # fixtures


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging("INFO", stream=buffer, cache=False)
    # A module logger first used after an earlier test configured logging with caching on (the CLI does) stays
    # bound to that configuration's stream: every module's logger binds afresh.
    lazy = type(structlog.get_logger())
    for module in list(sys.modules.values()):
        proxy = getattr(module, "log", None)
        if isinstance(proxy, lazy):
            vars(proxy).pop("bind", None)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_every_line_is_json_with_the_request_id(app: FastAPI, settings: Settings, log_lines: io.StringIO) -> None:
    async with http_client(app) as client:
        response = await client.post(
            f"{API}/runs", json=RUN, headers={**auth(settings, "alice"), "X-Request-ID": "r-42"}
        )
    assert response.status_code == 201 and response.headers["X-Request-ID"] == "r-42"
    lines = [orjson.loads(line) for line in log_lines.getvalue().splitlines()]
    # One line for the request, with the event it published (no separate api.published line).
    [access] = [line for line in lines if line.get("request_id") == "r-42"]
    assert access["event"] == "http.request"
    assert (access["route"], access["status"], access["level"]) == ("/api/v1/verification/runs", 201, "info")
    assert access["topic"] == "verify.run.requested" and access["duplicate"] is False and access["seq"] >= 1
    assert access["correlationId"] == f"run-{response.json()['run_id']}" and len(access["eventId"]) == 26
    logging.getLogger("echelon.test.stdlib").warning("from the standard library")
    foreign = orjson.loads(log_lines.getvalue().splitlines()[-1])
    assert (foreign["event"], foreign["logger"], foreign["level"]) == (
        "from the standard library",
        "echelon.test.stdlib",
        "warning",
    )
