"""Losing Redis in the middle of work loses nothing: runs in flight finish with exactly one certificate,
and an Idempotency-Key still names its run. (Reproduced before: 15 of 20 in-flight runs were never
certified after a FLUSHALL, because their certify trigger depended on Redis state.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from echelon_platform.config import Settings
from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import run_body
from tests.helpers import wait_for

SLOW_ORACLE = "tests.e2e.slow_oracle:summarise_slowly"


@pytest.fixture
async def settings(settings: Settings) -> AsyncIterator[Settings]:
    yield settings.model_copy(update={"oracle_allowlist": [*settings.oracle_allowlist, SLOW_ORACLE]})


async def lose_read_models(world: Running) -> int:
    """A Redis restart without persistence, for our keys (the server is shared with other tests)."""
    redis = world.services.read_models.redis
    keys = [k async for k in redis.scan_iter(match=f"{world.settings.redis_prefix}*", count=1000)]
    return int(await redis.delete(*keys)) if keys else 0


@pytest.mark.timeout(240)
async def test_runs_in_flight_finish_after_the_read_models_are_lost(running: Running, sample_repo: Path) -> None:
    body = run_body(sample_repo, oracle_module="tests.e2e.slow_oracle", oracle_callable="summarise_slowly", limit=4)
    run_ids = []
    for i in range(6):
        response = await running.api.post(
            "/api/v1/verification/runs", json=body, headers={**running.auth(), "Idempotency-Key": f"flush-{i}"}
        )
        assert response.status_code == 201, response.text
        run_ids.append(response.json()["run_id"])

    async def some_replay_invoked() -> bool:
        rows = await running.services.store.pool.fetchval(
            "SELECT count(*) FROM events WHERE topic = 'verify.replay.invoked'"
        )
        return bool(rows)

    await wait_for(some_replay_invoked, timeout=60, what="work in flight")
    assert await lose_read_models(running) > 0

    # A used key still names its run after the loss: 200 with the same run, no second run.
    again = await running.api.post(
        "/api/v1/verification/runs", json=body, headers={**running.auth(), "Idempotency-Key": "flush-0"}
    )
    assert again.status_code == 200 and again.json()["run_id"] == run_ids[0]

    for run_id in run_ids:
        view = await running.wait_status(run_id, "COMPLETED", "FAILED", timeout=120)
        assert view["status"] == "COMPLETED", view
        assert view["certificate_id"]
    counts = await running.services.store.pool.fetch(
        "SELECT correlation_id, count(*) FILTER (WHERE topic = 'verify.certificate.issued') AS certs, "
        "count(*) FILTER (WHERE topic = 'verify.run.requested') AS requests "
        "FROM events WHERE correlation_id <> 'run-methodology' GROUP BY correlation_id"
    )
    assert {r["correlation_id"].removeprefix("run-") for r in counts} == set(run_ids)
    assert all(r["certs"] == 1 and r["requests"] == 1 for r in counts)
    listed = await running.api.get("/api/v1/verification/runs", headers=running.auth())
    assert listed.json()["total"] == len(run_ids)
