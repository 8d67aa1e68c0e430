"""Schemathesis against the live app (real uvicorn, NATS, Postgres, Redis): no 5xx, and every response —
status, content type, headers, body — is the one the OpenAPI document promises. Bounded to stay quick.

JSON Schema cannot express what a JSON encoder refuses to write, so a second property takes each generated
valid body, puts a poison somewhere in it (NaN, ±Infinity, a number beyond a double, a lone surrogate, nesting
past the cap, the 220 KB bracket body) and checks the answer is a 422 saying why."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.json_body import MAX_JSON_DEPTH
from api.options import ApiOptions
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.factories import T0
from tests.helpers import certifier_keyring
from tests.integration.test_api_support import auth, certified_run, drain, publish, serve

EXAMPLES_PER_OPERATION = 60
# Headers that frame the HTTP message belong to the client library, not to the API's input: a generated
# `Content-Length: )xO…` is refused by the HTTP server's parser (400) before any route sees the request.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade"})
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def run_schemathesis(base_url: str, headers: dict[str, str]) -> list[str]:
    """Every operation, positive and negative examples; returns one line per failing operation."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = cast(Any, result).ok()
        # Negative examples are checked for conformance too, not for "was it rejected": the valid token we
        # send replaces the broken auth headers schemathesis generates, and FastAPI (like most frameworks)
        # takes the last value of a repeated query parameter, so such "invalid" requests rightly succeed.
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                property_test(operation, mode, CONFORMANCE, base_url, headers)()
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # no parameters: nothing to break
            except (Exception, FailureGroup) as exc:  # collected so one run reports every failing operation
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:3000]}")
    return failures


def property_test(
    operation: Any, mode: GenerationMode, checks: list[Any], base_url: str, headers: dict[str, str]
) -> Callable[[], None]:
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        for name in [h for h in (case.headers or {}) if h.lower() in FRAMING_HEADERS]:
            del case.headers[name]
        case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=10)

    return check


# Every operation gets 2 × EXAMPLES_PER_OPERATION requests: the default 120 s is too tight on a shared machine.
@pytest.mark.timeout(360)
async def test_live_app_conforms_to_its_openapi_document(settings: Settings, services: Services) -> None:
    keyring = await certifier_keyring(services.store, settings)
    for i in range(3):  # real certificates, so some generated requests hit 200 paths
        events, _ = certified_run(f"S{i}", construct=f"oracle-{i}", issued=T0 + timedelta(minutes=i), keyring=keyring)
        await publish(services, events)
    await drain(services, settings)
    # Ready (no 5xx from /readyz): the writer ran; no stage runs here, so none is required.
    ready = settings.model_copy(update={"ready_stages": []})
    app = create_app(ready, services, options=ApiOptions(runs_per_minute=20))
    async with serve(app) as host:
        failures = await asyncio.to_thread(run_schemathesis, f"http://{host}", auth(settings, "schemathesis"))
    assert failures == [], "\n\n".join(failures)


POISON_EXAMPLES_PER_OPERATION = 25
SENTINEL = "\x00poison\x00"
# A raw JSON text to put in place of a value, and what the 422 must say.
POISONS = [
    ("NaN", "non-finite number"),
    ("Infinity", "non-finite number"),
    ("-Infinity", "non-finite number"),
    ("1e999", "too large for a 64-bit float"),
    ('"\\ud800"', "not valid JSON"),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), f"deeper than {MAX_JSON_DEPTH} levels"),
    ("[" * 110_000 + "]" * 110_000, f"deeper than {MAX_JSON_DEPTH} levels"),
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value a poison can go: the value itself and each member, recursively."""
    found = [prefix]
    if isinstance(value, dict):
        for key, member in value.items():
            found += _paths(member, (*prefix, key))
    elif isinstance(value, list):
        for index, member in enumerate(value):
            found += _paths(member, (*prefix, index))
    return found


def _poisoned(body: Any, path: tuple[Any, ...], poison: str) -> bytes:
    def put(value: Any, rest: tuple[Any, ...]) -> Any:
        if not rest:
            return SENTINEL
        copy = dict(value) if isinstance(value, dict) else list(value)
        copy[rest[0]] = put(value[rest[0]], rest[1:])
        return copy

    return json.dumps(put(body, path)).replace(json.dumps(SENTINEL), poison).encode()


def run_poisoned(base_url: str, headers: dict[str, str]) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = cast(Any, result).ok()
        if not any(body.media_type == "application/json" for body in operation.body):
            continue
        tested += 1
        try:
            poisoned_property(operation, base_url, headers)()
        except Exception as exc:
            failures.append(f"{operation.label}: {str(exc)[:3000]}")
    assert tested >= 4, "expected the JSON-body routes (runs, session, ratings, methodologies)"
    return failures


def poisoned_property(operation: Any, base_url: str, headers: dict[str, str]) -> Callable[[], None]:
    @hypothesis.settings(
        max_examples=POISON_EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(
        case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE, media_type="application/json"),
        data=st.data(),
    )
    def check(case: Any, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(_paths(case.body)), label="where")
        poison, why = data.draw(st.sampled_from(POISONS), label="poison")
        kwargs = case.as_transport_kwargs(base_url=base_url, headers=headers)
        sent = {k: v for k, v in kwargs["headers"].items() if k.lower() not in FRAMING_HEADERS}
        sent["Content-Type"] = "application/json"
        answer = requests.request(
            kwargs["method"],
            kwargs["url"],
            params=kwargs.get("params"),
            headers=sent,
            data=_poisoned(case.body, path, poison),
            timeout=10,
        )
        assert answer.status_code == 422, (answer.status_code, answer.text[:500])
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and why in detail, (detail, poison[:40], path)

    return check


@pytest.mark.timeout(300)
async def test_poisoned_json_bodies_are_refused_with_a_reason(settings: Settings, services: Services) -> None:
    app = create_app(settings, services, options=ApiOptions(runs_per_minute=20))
    async with serve(app) as host:
        failures = await asyncio.to_thread(run_poisoned, f"http://{host}", auth(settings, "schemathesis"))
    assert failures == [], "\n\n".join(failures)
