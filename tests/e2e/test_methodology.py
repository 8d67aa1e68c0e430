"""Judge calls in the log, certificates rederived from it, and the methodology registry, end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from echelon.commands import cmd_certificates
from echelon_platform.domain.events import JudgeCalled, ReplayInvoked, ReplayScored, payload_as
from pipeline_workers.rederive import rederive, rederive_from_store
from pipeline_workers.scoring.prompts import load_methodology
from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import certificate_of, run_body
from tests.helpers import wait_for

M = "/api/v1/methodology"


async def test_judge_calls_are_logged_once_and_rederive_reproduces_the_certificate(
    running: Running, sample_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    response = await running.api.post("/api/v1/verification/runs", json=run_body(sample_repo), headers=running.auth())
    run_id = response.json()["run_id"]
    cert = await certificate_of(running, run_id)
    store = running.services.store

    events = await store.run_events(run_id)
    calls = [payload_as(e, JudgeCalled) for e in events if e.topic == "verify.judge.called"]
    invoked = [payload_as(e, ReplayInvoked) for e in events if e.topic == "verify.replay.invoked"]
    scored = [payload_as(e, ReplayScored) for e in events if e.topic == "verify.replay.scored"]
    # One question call and one scoring call per replay (the offline judge needs no repair), each once.
    assert len(scored) == cert.replay_count > 0
    assert sorted((c.replay_id, c.purpose) for c in calls) == sorted(
        [(i.replay_id, "question") for i in invoked] + [(s.replay_id, "score") for s in scored]
    )
    keys = {e.dedup_key for e in events if e.topic == "verify.judge.called"}
    assert {k for s in scored for k in s.judge_calls} | {k for i in invoked for k in i.question_calls} == keys
    assert all(c.raw_text and c.usable and c.methodology_version == "v1" for c in calls)

    # The certificate names its methodology and judge; rederiving from the log gives the same hash.
    assert cert.methodology_version == "v1" and cert.methodology_hash == load_methodology("v1").sha256
    assert cert.mixed_judges is False
    assert {s.scoring_model for s in cert.individual_scores} == {"offline-lexical-v1"}
    again = await rederive_from_store(store, cert.certificate_id)
    assert again.same, again.differences
    assert again.rebuilt.content_hash == cert.content_hash
    assert again.judge_calls == len(calls)
    # The same through the CLI: `echelon certificates rederive ID`.
    args = argparse.Namespace(action="rederive", certificate_id=cert.certificate_id, json=False)
    assert await cmd_certificates(args, running.settings) == 0
    out = capsys.readouterr().out
    assert f"same figures and content hash {cert.content_hash}" in out and "without calling a judge" in out

    # A judge answer that says something else leads to other numbers: rederive reads the logged text.
    registry = await store.run_events("methodology", ["verify.methodology.registered"])
    first_score = next(e for e in events if e.topic == "verify.judge.called" and e.payload["purpose"] == "score")
    flipped = first_score.payload["raw_text"].replace('"supported": true', '"supported": false')
    assert flipped != first_score.payload["raw_text"]
    tampered = [
        e.model_copy(update={"payload": {**e.payload, "raw_text": flipped}}) if e is first_score else e for e in events
    ]
    assert not rederive(tampered, registry).same

    # A redelivered judge event is stored once, and /stats counts each logged call once.
    usage = await store.judge_usage([run_id])
    assert usage[run_id].calls == len(calls)
    subject = running.services.subjects.subject(first_score.topic, run_id)
    await running.services.bus.publish_raw(subject, first_score.to_wire(), msg_id=f"again-{first_score.event_id}")
    marker = await running.api.post(M, json={"version": "v99", "files": {"judge.txt": "x"}}, headers=admin(running))
    assert marker.status_code == 201, marker.text
    await wait_for(lambda: _registered(running, "v99"), what="the marker after the duplicate to be logged")
    assert (await store.judge_usage([run_id]))[run_id].calls == len(calls)


async def _registered(running: Running, version: str) -> bool:
    return (await running.api.get(f"{M}/{version}")).status_code == 200


def admin(running: Running) -> dict[str, str]:
    return {"Authorization": f"Bearer {running.token('root', admin=True)}"}


async def test_methodology_registry_routes(running: Running) -> None:
    packaged = load_methodology("v1")

    async def current() -> dict[str, object] | None:
        body: dict[str, object] = (await running.api.get(M)).json()
        return body if body["current_registered"] else None

    # The certify stage registered the version it uses at start.
    index = await wait_for(current, what="the certify stage to register v1")
    assert index["current"] == "v1"
    assert index["current_registered"]["sha256"] == packaged.sha256  # type: ignore[index]
    detail = (await running.api.get(f"{M}/v1")).json()
    assert detail["files"] == dict(packaged.files) and "judge.txt" in detail["contents"]
    assert (await running.api.get(f"{M}/v7")).status_code == 404

    body = {"version": "v2", "description": "stricter rubric", "files": {"judge.txt": "Judge strictly.\n"}}
    assert (await running.api.post(M, json=body)).status_code == 401
    forbidden = await running.api.post(M, json=body, headers=running.auth("alice"))
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["detail"]
    created = await running.api.post(M, json=body, headers=admin(running))
    assert created.status_code == 201, created.text
    assert created.json()["registered_by"] == "root" and len(created.json()["sha256"]) == 64
    await wait_for(lambda: _registered(running, "v2"), what="v2 in the log")
    same = await running.api.post(M, json=body, headers=admin(running))
    assert same.status_code == 200 and same.json()["sha256"] == created.json()["sha256"]
    changed = await running.api.post(
        M, json={**body, "files": {"judge.txt": "Judge leniently.\n"}}, headers=admin(running)
    )
    assert changed.status_code == 422 and "another hash" in changed.json()["detail"]
    history = (await running.api.get(M)).json()["history"]
    assert [h["version"] for h in history] == ["v1", "v2"]

    # Registry events are not a run: nobody sees a run "methodology", and the watchdog has nothing to judge.
    runs = (await running.api.get("/api/v1/verification/runs", headers=admin(running))).json()
    assert all(run["run_id"] != "methodology" for run in runs["runs"])
    assert (await running.api.get("/api/v1/verification/runs/methodology", headers=admin(running))).status_code == 404
    assert all(r.run_id != "methodology" for r in await running.services.read_models.active_runs(float("inf")))
