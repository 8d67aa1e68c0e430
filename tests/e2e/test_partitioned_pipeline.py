"""The whole service on a log of two partitions: runs on either partition complete, and the global listing
and certificate indexes hold every run."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from api.runs import idempotent_run_id
from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import certificate_of, run_body


@pytest.mark.parametrize("running", [{"partitions": 2}], indirect=True)
async def test_runs_on_both_partitions_complete(running: Running, sample_repo: Path) -> None:
    parts = running.settings.partitioning
    # An Idempotency-Key names its run id, so one key per partition is picked up front: exactly two runs,
    # whatever the hash does with random ids (and well inside the per-user rate limit).
    keys: dict[int, str] = {}
    for i in itertools.count():
        keys.setdefault(parts.of_run(idempotent_run_id("alice", f"part-{i}")), f"part-{i}")
        if len(keys) == parts.count:
            break
    run_ids: list[str] = []
    for key in keys.values():
        response = await running.api.post(
            "/api/v1/verification/runs",
            json=run_body(sample_repo, limit=3, min_replays=2),
            headers={**running.auth(), "Idempotency-Key": key},
        )
        assert response.status_code == 201, response.text
        run_ids.append(response.json()["run_id"])
    assert {parts.of_run(r) for r in run_ids} == {0, 1}
    certs = [await certificate_of(running, run_id) for run_id in run_ids]
    listed = (await running.api.get("/api/v1/verification/runs?limit=50", headers=running.auth())).json()
    assert {r["run_id"] for r in listed["runs"]} >= set(run_ids)
    rows = await running.services.store.pool.fetch("SELECT DISTINCT correlation_id, partition FROM events")
    assert {(r["correlation_id"].removeprefix("run-"), r["partition"]) for r in rows} >= {
        (run_id, parts.of_run(run_id)) for run_id in run_ids
    }
    assert len({c.certificate_id for c in certs}) == len(run_ids)
