"""Schemathesis against the live app (real uvicorn, NATS, Postgres, Redis): no 5xx, and every response —
status, content type, headers, body — is the one the OpenAPI document promises. Bounded to stay quick."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
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
from api.options import ApiOptions
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.factories import T0
from tests.helpers import certifier_keyring
from tests.integration.test_api_support import auth, certified_run, drain, publish, serve, services

__all__ = ["services"]  # fixtures

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
    app = create_app(settings, services, options=ApiOptions(runs_per_minute=20))
    async with serve(app) as host:
        failures = await asyncio.to_thread(run_schemathesis, f"http://{host}", auth(settings, "schemathesis"))
    assert failures == [], "\n\n".join(failures)
