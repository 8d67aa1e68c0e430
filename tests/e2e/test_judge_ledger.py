"""Every paid judge call once, and counted: the whole service on real NATS/Postgres/Redis, with Anthropic
faked at the HTTP boundary on a real port (tests/fake_anthropic.py counts what it would bill)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from api.app import create_app
from coordinator.assembly import coordinators_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import JudgeEndpoint, Settings
from echelon_platform.domain.certificate import BUDGET_REASON
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.values import CalibrationCertificate
from pipeline_workers.pipeline import STAGES
from tests.e2e.conftest import Running
from tests.e2e.test_pipeline import run_body
from tests.fake_anthropic import OVERLOADED, FakeAnthropic, is_question, serving
from tests.helpers import wait_for
from tests.integration.test_role_exit_codes import start_role

API_KEY = "sk-ant-api03-test-key-0123456789abcdef"


@asynccontextmanager
async def service(
    settings: Settings, fake: FakeAnthropic, *, stages: tuple[str, ...] = STAGES, **overrides: Any
) -> AsyncIterator[Running]:
    """The service (as tests/e2e/conftest.py's `running`) with the Anthropic judge pointed at `fake`."""
    settings = settings.model_copy(
        update={
            "ack_wait_s": 2.0,
            "max_deliver": 3,
            "anthropic_api_key": SecretStr(API_KEY),
            "anthropic_base_url": fake.url,
            **overrides,
        }
    )
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(Services(settings, name="e2e"))
        writers = await stack.enter_async_context(coordinators_for(services, settings))
        app = create_app(settings, services)
        await stack.enter_async_context(app.router.lifespan_context(app))
        api = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        )
        world = Running(settings, services, api, writers.members[0])
        world.tasks["coordinator"] = asyncio.create_task(writers.run())
        for stage in stages:
            await world.start_stage(stage, stack)
        try:
            yield world
        finally:
            writers.stop()
            for pipeline in world.pipelines.values():
                pipeline.stop()
            await asyncio.wait_for(asyncio.gather(*world.tasks.values(), return_exceptions=True), 30)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with serving(FakeAnthropic()) as served:
        yield served


async def submit(world: Running, repo: Path, **overrides: Any) -> str:
    response = await world.api.post("/api/v1/verification/runs", json=run_body(repo, **overrides), headers=world.auth())
    assert response.status_code == 201, response.text
    return str(response.json()["run_id"])


async def certificate(world: Running, run_id: str) -> CalibrationCertificate:
    view = await world.wait_status(run_id, "COMPLETED", "FAILED")
    assert view["status"] == "COMPLETED", view
    cert = await world.services.read_models.get_certificate(str(view["certificate_id"]))
    assert cert is not None
    return CalibrationCertificate.model_validate(cert)


async def judge_events(world: Running, run_id: str) -> tuple[list[Envelope], list[Envelope]]:
    """(started, called) judge events of the run in the log."""
    events = await world.services.store.run_events(run_id, ["verify.judge.started", "verify.judge.called"])
    return (
        [e for e in events if e.topic == "verify.judge.started"],
        [e for e in events if e.topic == "verify.judge.called"],
    )


async def test_a_judge_answering_529_leaves_every_attempt_in_the_log(
    settings: Settings, fake: FakeAnthropic, sample_repo: Path
) -> None:
    fake.plan = [OVERLOADED]  # the first request is refused as overloaded, then it answers
    async with service(settings, fake) as world:
        run_id = await submit(world, sample_repo, limit=2, min_replays=1)
        await certificate(world, run_id)
        started, called = await judge_events(world, run_id)
    billed = len(fake.requests)
    assert billed == 2 * 2 + 1  # a question and a score per change, one of them sent twice
    # Every request the provider received is a started attempt, and each has its outcome: the 529 too.
    assert len(started) == len(called) == billed
    assert {e.payload["attempt_id"] for e in started} == {e.payload["attempt_id"] for e in called}
    refused = [e.payload for e in called if e.payload["status"] == 529]
    assert len(refused) == 1 and refused[0]["usable"] is False and "overloaded" in refused[0]["error"]
    assert refused[0]["cost_usd"] == 0 and refused[0]["attempt"] == 1


async def test_a_score_worker_killed_mid_call_leaves_no_billed_request_unlogged(
    settings: Settings, fake: FakeAnthropic, sample_repo: Path, tmp_path: Path
) -> None:
    fake.release = asyncio.Event()
    fake.hold = lambda body: not is_question(body)  # scoring requests hang until the worker is killed
    async with service(settings, fake, stages=("ingest", "invoke", "certify")) as world:
        worker = await start_role(
            world.settings,
            tmp_path / "score.log",
            "worker",
            "score",
            env={
                "ECHELON_ANTHROPIC_API_KEY": API_KEY,
                "ECHELON_ANTHROPIC_BASE_URL": fake.url,
                "ECHELON_ACK_WAIT_S": "2",
                "ECHELON_FETCH_TIMEOUT_S": "0.2",
            },
        )
        try:
            run_id = await submit(world, sample_repo, limit=3, min_replays=1)
            await wait_for(lambda: fake.held >= 1, timeout=60, what="the score worker to be mid-call")
            worker.send_signal(signal.SIGKILL)
            await worker.wait()
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        in_flight = fake.held
        fake.release.set()  # the killed worker's requests were received: the provider bills them
        async with AsyncExitStack() as stack:
            await world.start_stage("score", stack)  # JetStream redelivers what the killed worker held
            await certificate(world, run_id)
            world.pipelines["score"].stop()
        started, called = await judge_events(world, run_id)
    billed = len(fake.requests)
    assert billed > len(called)  # requests whose answers never reached the log (the kill)...
    assert len(started) >= billed  # ...are all logged as started: the ledger never shows less than billed
    unfinished = {e.payload["attempt_id"] for e in started} - {e.payload["attempt_id"] for e in called}
    assert len(unfinished) >= in_flight >= 1


async def test_a_repeated_run_reuses_the_logged_answers_unless_it_opts_out(
    settings: Settings, fake: FakeAnthropic, sample_repo: Path
) -> None:
    async with service(settings, fake) as world:
        first = await certificate(world, await submit(world, sample_repo, limit=3, min_replays=1))
        paid = len(fake.requests)
        second_id = await submit(world, sample_repo, limit=3, min_replays=1)
        second = await certificate(world, second_id)
        reused_calls = len(fake.requests) - paid
        _, called = await judge_events(world, second_id)
        third = await certificate(world, await submit(world, sample_repo, limit=3, min_replays=1, judge_cache=False))
        fresh_calls = len(fake.requests) - paid - reused_calls
    assert paid == 2 * first.replay_count > 0 and first.reused_judge_answers is None
    assert reused_calls == 0  # the same oracle on the same changes: every answer comes from the log
    assert all(e.payload["reused_from"] and e.payload["cost_usd"] == 0 for e in called)
    assert second.reused_judge_answers == sorted(s.replay_id for s in second.individual_scores)
    assert sum(s.cost_usd for s in second.individual_scores) == 0 < sum(s.cost_usd for s in first.individual_scores)
    assert (second.precision, second.recall, second.composite_score) == (
        first.precision,
        first.recall,
        first.composite_score,
    )
    assert fresh_calls == paid and third.reused_judge_answers is None  # judge_cache: false asks again


async def test_a_run_stops_paying_at_its_budget_and_says_so(
    settings: Settings, fake: FakeAnthropic, sample_repo: Path
) -> None:
    # A verdict bills ~0.06 USD (4000 output tokens); a request's bound is ~0.066 (4096 output tokens) for
    # a score and ~0.017 for a question: 0.12 USD pays every question and exactly one score.
    fake.score_output_tokens = 4000
    budget = 0.12
    async with service(settings, fake) as world:
        run_id = await submit(world, sample_repo, limit=3, min_replays=1, max_cost_usd=budget)
        cert = await certificate(world, run_id)
        started, called = await judge_events(world, run_id)
        starved_id = await submit(world, sample_repo, limit=3, min_replays=1, max_cost_usd=0.01, judge_cache=False)
        starved = await world.wait_status(starved_id, "COMPLETED", "FAILED")
        starved_started, _ = await judge_events(world, starved_id)
    assert sum(e.payload["cost_usd"] for e in called) <= budget
    assert len(started) == len(called) == len(fake.requests) == 3 + 1
    assert cert.replay_count == 1 and cert.partial and cert.budget_usd == budget
    assert len(cert.failed_replays) == 2 and all(BUDGET_REASON in f.reason for f in cert.failed_replays)
    assert cert.warning is not None and "budget" in cert.warning
    # A budget too small for any request: nothing is sent, and the run fails saying why.
    assert starved["status"] == "FAILED" and BUDGET_REASON in str(starved["error"])
    assert starved_started == [] and len(fake.requests) == 4


async def test_refused_mixing_stops_at_the_first_mixed_judgement(
    settings: Settings, fake: FakeAnthropic, sample_repo: Path
) -> None:
    scored: list[int] = []

    def second_score_refused(body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        if is_question(body):
            return None
        scored.append(1)
        if len(scored) == 1:
            return None
        return 400, {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long"}}

    fake.decide = second_score_refused
    async with service(
        settings,
        fake,
        judges=["anthropic:claude-sonnet-4-6", "offline"],
        judge_mixing="refuse",
        stage_per_run_concurrency=1,
    ) as world:
        run_id = await submit(world, sample_repo, limit=5, min_replays=1)
        view = await world.wait_status(run_id, "COMPLETED", "FAILED")
    assert len(scored) == 2  # one score by each judge, then no more paid scoring
    assert view["status"] == "FAILED" and "ECHELON_JUDGE_MIXING" in str(view["error"])


async def test_each_judge_has_its_own_endpoint_and_key_and_its_own_cost(
    settings: Settings, fake: FakeAnthropic, sample_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRIMARY_JUDGE_KEY", "sk-ant-primary-0123456789")
    monkeypatch.setenv("FALLBACK_JUDGE_KEY", "sk-ant-fallback-0123456789")
    fake.decide = lambda body: (404, {"type": "error", "error": {"type": "not_found_error", "message": "model: x"}})
    judges = [
        JudgeEndpoint(judge="anthropic:claude-sonnet-4-6", base_url=fake.url, api_key_env="PRIMARY_JUDGE_KEY"),
        JudgeEndpoint(judge="anthropic:claude-haiku-4-5", base_url="", api_key_env="FALLBACK_JUDGE_KEY"),
    ]
    async with serving(FakeAnthropic()) as fallback:
        judges[1] = judges[1].model_copy(update={"base_url": fallback.url})
        async with service(settings, fake, judges=judges) as world:
            run_id = await submit(world, sample_repo, limit=2, min_replays=1)
            cert = await certificate(world, run_id)
            _, called = await judge_events(world, run_id)
    assert cert.scoring_model == "anthropic:claude-haiku-4-5"
    assert fake.requests and set(fake.keys) == {"sk-ant-primary-0123456789"}
    assert len(fallback.requests) == 2 * cert.replay_count and set(fallback.keys) == {"sk-ant-fallback-0123456789"}
    # Cost per judge, from the judge events: the refused judge billed nothing, the fallback everything.
    cost: dict[str, float] = {}
    for event in called:
        cost[event.payload["judge"]] = cost.get(event.payload["judge"], 0.0) + event.payload["cost_usd"]
    assert cost["anthropic:claude-sonnet-4-6"] == 0
    assert cost["anthropic:claude-haiku-4-5"] == pytest.approx(sum(s.cost_usd for s in cert.individual_scores))
