"""End to end on real NATS/Postgres/Redis: request → ingest → invoke → score → certify."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg

from echelon_platform.domain.certificate import verify_certificate
from echelon_platform.domain.values import CalibrationCertificate
from tests.e2e.conftest import Running
from tests.helpers import wait_for


def run_body(repo: Path, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "repo_url": str(repo),
        "construct_id": "sample-summariser",
        "oracle_type": "python",
        "oracle_module": "pipeline_workers.oracles.sample",
        "oracle_callable": "summarise",
        "limit": 20,
        "min_replays": 3,
    }
    return body | overrides


async def certificate_of(world: Running, run_id: str) -> CalibrationCertificate:
    view = await world.wait_status(run_id, "COMPLETED", "FAILED")
    assert view["status"] == "COMPLETED", view
    cert = await world.services.read_models.get_certificate(str(view["certificate_id"]))
    assert cert is not None
    return CalibrationCertificate.model_validate(cert)


async def test_run_over_local_git_reaches_completed_with_a_certificate(running: Running, sample_repo: Path) -> None:
    response = await running.api.post("/api/v1/verification/runs", json=run_body(sample_repo), headers=running.auth())
    assert response.status_code == 201, response.text
    run_id = response.json()["run_id"]
    # Read-your-writes: the run is visible at once, before the coordinator necessarily projected it.
    first = await running.api.get(f"/api/v1/verification/runs/{run_id}", headers=running.auth())
    assert first.status_code == 200 and first.json()["status"] in {"PENDING", "INGESTING", "INVOKING"}

    cert = await certificate_of(running, run_id)
    view = (await running.api.get(f"/api/v1/verification/runs/{run_id}", headers=running.auth())).json()
    assert view["progress"] == view["total"] == cert.replay_count + len(cert.failed_replays) > 0
    assert cert.scoring_model == "offline-lexical-v1"
    assert cert.ground_truth_source == "local_git" and ".." in cert.commit_range
    assert 0 < cert.composite_score <= 1
    assert (
        cert.brier == round((1 - cert.composite_score) * 0.5, 6)
        or abs(cert.brier - (1 - cert.composite_score) * 0.5) < 1e-6
    )
    assert verify_certificate(cert) == (True, True)
    # Signed by the certifier, naming the oracle and the selection policy; /verify checks the signature.
    assert cert.oracle is not None and cert.oracle.target == "pipeline_workers.oracles.sample:summarise"
    assert cert.oracle.fingerprint is not None and cert.oracle.fingerprint.startswith("sha256:")
    assert cert.selection_policy == "local_git/pr-merges@1"
    assert cert.calibration is None  # the sample oracle states no per-claim confidences
    checked = (await running.api.get(f"/api/v1/verification/certificates/{cert.certificate_id}/verify")).json()
    assert checked["signature_ok"] is True and checked["valid"] is True
    # Another user cannot see it.
    other = await running.api.get(f"/api/v1/verification/runs/{run_id}", headers=running.auth("mallory"))
    assert other.status_code == 404


async def test_a_run_whose_oracle_always_fails_reaches_failed(running: Running, sample_repo: Path) -> None:
    body = run_body(sample_repo, oracle_callable="broken", limit=3)
    response = await running.api.post("/api/v1/verification/runs", json=body, headers=running.auth())
    assert response.status_code == 201, response.text
    view = await running.wait_status(response.json()["run_id"], "COMPLETED", "FAILED")
    assert view["status"] == "FAILED"
    assert "All replays failed" in str(view["error"])
    assert view["certificate_id"] is None


async def test_killed_stage_worker_still_gives_exactly_one_certificate_with_the_same_numbers(
    running: Running, sample_repo: Path
) -> None:
    reference = await certificate_of(
        running,
        (
            await running.api.post("/api/v1/verification/runs", json=run_body(sample_repo), headers=running.auth())
        ).json()["run_id"],
    )

    # Kill the scorer the moment it has taken work, and run two certifier instances side by side.
    scorer = running.pipelines["score"]
    async with AsyncExitStack() as stack:
        await running.start_stage("certify", stack, key="certify-2")
        response = await running.api.post(
            "/api/v1/verification/runs", json=run_body(sample_repo), headers=running.auth()
        )
        run_id = response.json()["run_id"]
        await wait_for(lambda: scorer.workers[0].stats.handled >= 1, what="the scorer to start working")
        running.tasks["score"].cancel()  # in-flight messages are never acked: JetStream redelivers them
        await asyncio.gather(running.tasks["score"], return_exceptions=True)
        await running.start_stage("score", stack, key="score-2")
        cert = await certificate_of(running, run_id)
        running.pipelines["certify-2"].stop()
        running.pipelines["score-2"].stop()

    conn = await asyncpg.connect(running.settings.database_url)
    try:
        issued = await conn.fetchval(
            "SELECT count(*) FROM events WHERE topic = 'verify.certificate.issued' AND correlation_id = $1",
            f"run-{run_id}",
        )
    finally:
        await conn.close()
    assert issued == 1
    same = ("precision", "recall", "reply_accuracy", "composite_score", "brier", "replay_count")
    assert {k: getattr(cert, k) for k in same} == {k: getattr(reference, k) for k in same}
