"""A malformed message on a run's subject must not hurt that run: it is parked, and stages and the API
read the run's request from the log or the first valid message. (Seen before: the invoke stage took such
bytes for the run's request and the valid run ended FAILED; GET answered 500 with the parse error.)"""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import run_body
from tests.helpers import wait_for


async def test_bytes_on_a_live_runs_request_subject_are_parked_and_the_run_completes(
    running: Running, sample_repo: Path
) -> None:
    response = await running.api.post("/api/v1/verification/runs", json=run_body(sample_repo), headers=running.auth())
    assert response.status_code == 201, response.text
    run_id = response.json()["run_id"]
    subject = running.services.subjects.subject("verify.run.requested", run_id)
    await running.services.bus.publish_raw(subject, orjson.dumps({"hello": "not an event"}), msg_id="junk-1")
    view = await running.wait_status(run_id, "COMPLETED", "FAILED", timeout=90)
    assert view["status"] == "COMPLETED", view

    async def parked() -> bool:
        return any(p.subject == subject for p in await running.services.store.parked())

    await wait_for(parked, what="the malformed message parked with its reason")


async def test_a_run_whose_only_request_is_malformed_is_not_found_not_a_500(running: Running) -> None:
    subject = running.services.subjects.subject("verify.run.requested", "GHOSTRUN")
    await running.services.bus.publish_raw(subject, b'{"payload": {"run_id": "GHOSTRUN"}}', msg_id="junk-2")
    for user in ("alice", "mallory"):
        answer = await running.api.get("/api/v1/verification/runs/GHOSTRUN", headers=running.auth(user))
        assert answer.status_code == 404, answer.text
        assert "KeyError" not in answer.text and "payload" not in answer.text
