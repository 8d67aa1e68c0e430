"""The whole service on a log of two partitions: runs on either partition complete, and the global listing
and certificate indexes hold every run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import certificate_of, run_body


@pytest.mark.parametrize("running", [{"partitions": 2}], indirect=True)
async def test_runs_on_both_partitions_complete(running: Running, sample_repo: Path) -> None:
    parts = running.settings.partitioning
    run_ids: list[str] = []
    while {parts.of_run(r) for r in run_ids} != {0, 1}:
        response = await running.api.post(
            "/api/v1/verification/runs", json=run_body(sample_repo, limit=3, min_replays=2), headers=running.auth()
        )
        assert response.status_code == 201, response.text
        run_ids.append(response.json()["run_id"])
        assert len(run_ids) < 12, "twelve run ids on one partition: the hash does not spread"
    certs = [await certificate_of(running, run_id) for run_id in run_ids]
    listed = (await running.api.get("/api/v1/verification/runs?limit=50", headers=running.auth())).json()
    assert {r["run_id"] for r in listed["runs"]} >= set(run_ids)
    rows = await running.services.store.pool.fetch("SELECT DISTINCT correlation_id, partition FROM events")
    assert {(r["correlation_id"].removeprefix("run-"), r["partition"]) for r in rows} >= {
        (run_id, parts.of_run(run_id)) for run_id in run_ids
    }
    assert len({c.certificate_id for c in certs}) == len(run_ids)
