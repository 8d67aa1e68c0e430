"""Repeats (k oracle calls per change, the certificate's spread over them) and rescoring a logged run (a new
signed certificate linked to the first, no oracle call), end to end against HTTP oracles on a real port."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from echelon_platform.domain.events import JudgeCalled, payload_as
from echelon_platform.domain.repeats import spread_ok
from echelon_platform.domain.values import CalibrationCertificate
from pipeline_workers.oracles.sample import summarise
from pipeline_workers.rederive import rederive_from_store
from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import certificate_of, run_body
from tests.helpers import wait_for

RUNS = "/api/v1/verification/runs"
BOGUS = "Adds a quantum flux capacitor to the zebra stable"


@dataclass
class Oracles:
    base: str
    calls: Counter[str] = field(default_factory=Counter)  # route → calls
    per_change: Counter[str] = field(default_factory=Counter)  # (shaky) change title → calls


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def oracles() -> AsyncIterator[Oracles]:
    """Two constructs hosted elsewhere: `steady` answers the same question the same way every time; `shaky`
    adds one more made-up claim each time it is asked about the same change (so its precision wobbles)."""
    world = Oracles(base="")

    async def steady(request: Request) -> Response:
        world.calls["steady"] += 1
        return JSONResponse(summarise(await request.json()))

    async def shaky(request: Request) -> Response:
        world.calls["shaky"] += 1
        body = await request.json()
        title = str((body.get("pr") or {}).get("title"))
        extra = world.per_change[title]
        world.per_change[title] += 1
        reply = summarise(body)
        reply["key_claims"] = [*reply["key_claims"], *[f"{BOGUS} #{i}" for i in range(extra)]]
        return JSONResponse(reply)

    async def first_fails(request: Request) -> Response:
        world.calls["first_fails"] += 1
        if world.calls["first_fails"] == 1:
            return JSONResponse({"error": "overloaded"}, status_code=500)
        return JSONResponse(summarise(await request.json()))

    routes = [("/steady", steady), ("/shaky", shaky), ("/first_fails", first_fails)]
    app = Starlette(routes=[Route(path, handler, methods=["POST"]) for path, handler in routes])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, what="fake oracle server")
    world.base = f"http://127.0.0.1:{port}"
    yield world
    server.should_exit = True
    await task


def http_body(repo: Path, url: str, **overrides: Any) -> dict[str, Any]:
    return run_body(repo, oracle_type="http", oracle_url=url, oracle_module=None, oracle_callable=None, **overrides)


def admin(running: Running) -> dict[str, str]:
    return {"Authorization": f"Bearer {running.token('root', admin=True)}"}


async def test_repeats_report_each_figures_spread_over_the_repeats(
    running: Running, sample_repo: Path, oracles: Oracles
) -> None:
    changes = 3
    ids = {}
    for name in ("steady", "shaky"):
        body = http_body(sample_repo, f"{oracles.base}/{name}", limit=changes, repeats=3, construct_id=f"{name}-oracle")
        response = await running.api.post(RUNS, json=body, headers=running.auth())
        assert response.status_code == 201, response.text
        ids[name] = response.json()["run_id"]
    steady = await certificate_of(running, ids["steady"])
    shaky = await certificate_of(running, ids["shaky"])

    # k calls per change, one replay per (change, repeat) with a deterministic id.
    assert oracles.calls == {"steady": 3 * changes, "shaky": 3 * changes}
    assert sorted(oracles.per_change.values()) == [3] * changes
    view = (await running.api.get(f"{RUNS}/{ids['steady']}", headers=running.auth())).json()
    assert view["total"] == view["progress"] == 3 * changes
    run = ids["steady"]
    assert sorted(s.replay_id for s in steady.individual_scores) == sorted(
        f"{run}-{i:04d}{suffix}" for i in range(changes) for suffix in ("", "-r1", "-r2")
    )
    assert Counter(s.repeat for s in steady.individual_scores) == {0: changes, 1: changes, 2: changes}
    assert steady.partial is False  # 3 changes found of the 3 asked for: repeats do not count as changes

    # The steady oracle: every figure the same in every repeat; the headline is their mean.
    spread = steady.repeat_spread
    assert spread is not None and spread.repeats == 3 and spread.scored == [changes] * 3
    assert set(spread.metrics) == {"precision", "recall", "reply_accuracy", "composite_score"}
    for name, figure in spread.metrics.items():
        assert figure.stdev == 0 and figure.min == figure.max == figure.mean == getattr(steady, name), name
    # The shaky one: precision differs from repeat to repeat; the headline is still the mean.
    wobble = shaky.repeat_spread
    assert wobble is not None
    precision = wobble.metrics["precision"]
    assert precision.stdev > 0 and precision.min < precision.max
    assert abs(precision.mean - shaky.precision) <= 1e-6
    assert shaky.precision < steady.precision

    for cert in (steady, shaky):
        assert spread_ok(cert)
        checked = (await running.api.get(f"/api/v1/verification/certificates/{cert.certificate_id}/verify")).json()
        assert checked["valid"] is True, checked
        again = await rederive_from_store(running.services.store, cert.certificate_id)
        assert again.same, again.differences
        assert again.rebuilt.repeat_spread == cert.repeat_spread
    # A spread that does not follow from the scores is caught offline.
    forged = shaky.model_copy(update={"repeat_spread": steady.repeat_spread})
    assert not spread_ok(forged)
    shown = (await running.api.get(f"/api/v1/verification/certificates/{shaky.certificate_id}")).json()
    assert shown["repeat_spread"]["metrics"]["precision"]["stdev"] == precision.stdev
    assert {s["repeat"] for s in shown["replay_scores"]} == {0, 1, 2}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"repeats": 0}, "greater than or equal to 1"),
        ({"repeats": 11}, "less than or equal to 10"),
        ({"repeats": 10, "limit": 101}, "at most 1000 oracle calls"),
    ],
)
async def test_repeats_out_of_bounds_are_refused(
    running: Running, sample_repo: Path, overrides: dict[str, Any], message: str
) -> None:
    response = await running.api.post(RUNS, json=run_body(sample_repo, **overrides), headers=running.auth())
    assert response.status_code == 422 and message in response.text, response.text


async def test_rescore_scores_the_logged_replies_into_a_second_signed_certificate(
    running: Running, sample_repo: Path, oracles: Oracles
) -> None:
    body = http_body(sample_repo, f"{oracles.base}/steady", limit=3)
    response = await running.api.post(RUNS, json=body, headers=running.auth())
    source_run = response.json()["run_id"]
    first = await certificate_of(running, source_run)
    paid = oracles.calls["steady"]
    assert paid == first.replay_count + len(first.failed_replays) == 3
    rescore = f"{RUNS}/{source_run}/rescore"

    # Admins only; a methodology the log does not hold, an unknown judge or run are refused.
    ask = {"methodology_version": "v1", "judge": "offline"}
    assert (await running.api.post(rescore, json=ask)).status_code == 401
    forbidden = await running.api.post(rescore, json=ask, headers=running.auth())
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["detail"]
    unknown = await running.api.post(rescore, json={"methodology_version": "v9"}, headers=admin(running))
    assert unknown.status_code == 422 and "v9 is not registered" in unknown.json()["detail"]
    bad_judge = await running.api.post(rescore, json={**ask, "judge": "gpt:x"}, headers=admin(running))
    assert bad_judge.status_code == 422 and "unknown judge" in bad_judge.json()["detail"]
    missing = await running.api.post(f"{RUNS}/NOSUCHRUN/rescore", json=ask, headers=admin(running))
    assert missing.status_code == 404

    created = await running.api.post(rescore, json=ask, headers=admin(running))
    assert created.status_code == 201, created.text
    new_run = created.json()["run_id"]
    asked_again = await running.api.post(rescore, json=ask, headers=admin(running))
    assert asked_again.status_code == 200 and asked_again.json()["run_id"] == new_run
    second = await certificate_of(running, new_run)  # the source run's owner sees the rescore of their run

    # No oracle call; a new certificate, signed, linked to the first, scored from the same replies.
    assert oracles.calls["steady"] == paid
    assert second.certificate_id != first.certificate_id and second.rescored_from == first.certificate_id
    assert second.signature is not None
    checked = (await running.api.get(f"/api/v1/verification/certificates/{second.certificate_id}/verify")).json()
    assert checked["valid"] is True and checked["signature_ok"] is True, checked
    assert second.methodology_version == "v1" and second.scoring_model == "offline-lexical-v1"
    assert (second.precision, second.recall, second.reply_accuracy, second.composite_score) == (
        first.precision,
        first.recall,
        first.reply_accuracy,
        first.composite_score,
    )
    assert [s.ground_truth_id for s in second.individual_scores] == [s.ground_truth_id for s in first.individual_scores]
    assert (second.commit_range, second.oracle) == (first.commit_range, first.oracle)

    # Its log: the replies copied from the source run's (each names its source replay), only scoring calls.
    events = await running.services.store.run_events(new_run)
    requested = next(e for e in events if e.topic == "verify.run.requested")
    assert requested.payload["rescore"]["source_run_id"] == source_run
    assert requested.payload["rescore"]["requested_by"] == "root" and requested.payload["secret_ref"] is None
    invoked = [e.payload for e in events if e.topic == "verify.replay.invoked"]
    assert sorted(i["rescore_of"] for i in invoked) == sorted(s.replay_id for s in first.individual_scores)
    calls = [payload_as(e, JudgeCalled) for e in events if e.topic == "verify.judge.called"]
    assert {c.purpose for c in calls} == {"score"} and len(calls) == len(invoked)
    again = await rederive_from_store(running.services.store, second.certificate_id)
    assert again.same, again.differences
    # The first certificate is unchanged.
    stored = await running.services.read_models.get_certificate(first.certificate_id)
    assert stored is not None and CalibrationCertificate.model_validate(stored).content_hash == first.content_hash


async def test_rescore_of_a_run_without_a_certificate_is_refused(running: Running, sample_repo: Path) -> None:
    response = await running.api.post(
        RUNS, json=run_body(sample_repo, oracle_callable="broken", limit=2), headers=running.auth()
    )
    run_id = response.json()["run_id"]
    await running.wait_status(run_id, "FAILED")
    refused = await running.api.post(
        f"{RUNS}/{run_id}/rescore", json={"methodology_version": "v1"}, headers=admin(running)
    )
    assert refused.status_code == 422 and "only a completed run" in refused.json()["detail"]


async def test_rescore_carries_the_source_runs_oracle_failures(
    running: Running, sample_repo: Path, oracles: Oracles
) -> None:
    body = http_body(sample_repo, f"{oracles.base}/first_fails", limit=3)
    source_run = (await running.api.post(RUNS, json=body, headers=running.auth())).json()["run_id"]
    first = await certificate_of(running, source_run)
    assert first.replay_count == 2 and len(first.failed_replays) == 1 and oracles.calls["first_fails"] == 3
    created = await running.api.post(
        f"{RUNS}/{source_run}/rescore", json={"methodology_version": "v1"}, headers=admin(running)
    )
    second = await certificate_of(running, created.json()["run_id"])
    assert oracles.calls["first_fails"] == 3  # no oracle call, not even for the replay that failed
    (failed,) = second.failed_replays
    assert failed.ground_truth_id == first.failed_replays[0].ground_truth_id and failed.stage == "invoke"
    assert failed.reason.startswith(f"the oracle failed in run {source_run}: oracle returned HTTP 500"), failed.reason
    assert second.replay_count == 2 and second.composite_score == first.composite_score


async def test_rescore_under_a_methodology_the_stages_do_not_have_fails_with_its_reason(
    running: Running, sample_repo: Path, oracles: Oracles
) -> None:
    body = http_body(sample_repo, f"{oracles.base}/steady", limit=2)
    source_run = (await running.api.post(RUNS, json=body, headers=running.auth())).json()["run_id"]
    await certificate_of(running, source_run)
    # Registered in the log by an admin (so the API accepts it), but no stage has its prompts.
    files = {"judge.txt": "Judge strictly.\n"}
    registered = await running.api.post(
        "/api/v1/methodology", json={"version": "v2", "files": files}, headers=admin(running)
    )
    assert registered.status_code == 201, registered.text
    await wait_for(lambda: _registered(running, "v2"), what="v2 in the log")
    created = await running.api.post(
        f"{RUNS}/{source_run}/rescore", json={"methodology_version": "v2"}, headers=admin(running)
    )
    assert created.status_code == 201, created.text
    view = await running.wait_status(created.json()["run_id"], "COMPLETED", "FAILED")
    assert view["status"] == "FAILED" and "methodology v2" in str(view["error"]), view
    assert oracles.calls["steady"] == 2


async def _registered(running: Running, version: str) -> bool:
    return (await running.api.get(f"/api/v1/methodology/{version}")).status_code == 200
