"""A reply that cannot travel fails its replay on the first attempt, with a clear reason. (Seen before: the
publish failure was retried up to 10 times, each calling the oracle and the judge again.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from echelon_platform.config import Settings
from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import run_body

VERBOSE = "tests.e2e.slow_oracle:summarise_verbosely"


@pytest.fixture
async def settings(settings: Settings) -> AsyncIterator[Settings]:
    yield settings.model_copy(update={"oracle_allowlist": [*settings.oracle_allowlist, VERBOSE]})


async def test_an_oversized_reply_fails_its_replay_once(running: Running, sample_repo: Path) -> None:
    body = run_body(sample_repo, oracle_module="tests.e2e.slow_oracle", oracle_callable="summarise_verbosely", limit=3)
    response = await running.api.post("/api/v1/verification/runs", json=body, headers=running.auth())
    assert response.status_code == 201, response.text
    run_id = response.json()["run_id"]
    view = await running.wait_status(run_id, "COMPLETED", "FAILED", timeout=90)
    assert view["status"] == "FAILED"  # no replay could be scored
    failures = await running.services.store.run_events(run_id, ["verify.replay.failed"])
    assert failures and all("oracle reply too large" in str(e.payload["reason"]) for e in failures)
    retried = running.services.metrics.stage_processed.labels("invoke", "retry")._value.get()
    assert retried == 0
