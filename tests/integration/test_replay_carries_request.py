"""A replay request carries what invoke needs of its run's request (the oracle, the secret store's ref):
invoke reads nothing back. Requests logged before they carried it still work (the run's request is read)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import OracleSpec, ReplayInvoked, ReplayRequested, RunRequested, make_event
from echelon_platform.ports.run_secrets import RunSecrets
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.handlers.ingest import IngestHandler
from pipeline_workers.pipeline import Pipeline, stage_context
from pipeline_workers.scoring.offline import OfflineLexicalScorer
from tests.factories import T0, record
from tests.integration import oracle_targets

TARGET = "tests.integration.oracle_targets"
ORACLE = OracleSpec(type="python", module=TARGET, callable="counting")


@pytest.fixture
def service_settings(settings: Settings) -> Settings:
    oracle_targets.calls = 0
    return settings.model_copy(update={"oracle_allowlist": [f"{TARGET}:*"]})


def run_requested(run_id: str) -> Envelope:
    return make_event(
        RunRequested(
            run_id=run_id,
            user_id="alice",
            construct_id="counting",
            repo_url="https://github.com/acme/widgets",
            oracle=ORACLE,
            limit=10,
            min_replays=1,
            weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
            created_at=T0,
        )
    )


async def invoke(services: Services) -> None:
    async with Pipeline(services, services.settings, stages=("invoke",), scorer=OfflineLexicalScorer()) as pipeline:
        stats = await pipeline.run_until_idle()
    assert stats["invoke"].dead_lettered == 0


async def invoked(services: Services, run_id: str) -> ReplayInvoked | None:
    subject = services.subjects.subject("verify.replay.invoked", run_id)
    envelope = await services.bus.first_valid_on_subject(subject)
    return None if envelope is None else ReplayInvoked.model_validate(envelope.payload)


async def test_invoke_calls_the_oracle_the_replay_request_names_without_reading_the_run_request(
    services: Services,
) -> None:
    # No run request anywhere (stream or log): everything invoke needs travels with the replay request.
    replay = ReplayRequested(run_id="CARRY", replay_id="CARRY-0000", index=0, record=record(0), oracle=ORACLE)
    await services.bus.publish(make_event(replay))
    await invoke(services)
    assert oracle_targets.calls == 1
    result = await invoked(services, "CARRY")
    assert result is not None and result.replay_id == "CARRY-0000"


async def test_a_replay_request_logged_before_it_carried_the_oracle_reads_the_run_request(
    services: Services,
) -> None:
    old = ReplayRequested(run_id="OLDER", replay_id="OLDER-0000", index=0, record=record(0))
    assert "oracle" not in old.model_dump(exclude_none=True)
    await services.bus.publish(run_requested("OLDER"))
    await services.bus.publish(make_event(old))
    await invoke(services)
    assert oracle_targets.calls == 1
    assert await invoked(services, "OLDER") is not None


async def test_ingest_hands_each_replay_the_oracle_by_header_names_only(settings: Settings, tmp_path: Path) -> None:
    key = "sk-oracle-PLANTED-4c1d"
    repo = await materialise_sample_repo(tmp_path / "repos" / "sample")
    settings = settings.model_copy(update={"local_repo_roots": [tmp_path / "repos"]})
    oracle = OracleSpec(type="http", url="https://oracle.example.com/answer", header_names=["Authorization"])
    request = RunRequested(
        run_id="HEADS",
        user_id="alice",
        construct_id="remote",
        repo_url=str(repo),
        oracle=oracle,
        limit=3,
        min_replays=1,
        weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
        secret_ref="HEADS",
        created_at=T0,
    )
    async with Services(settings, name="test") as services, httpx.AsyncClient() as http:
        await services.secrets.put("HEADS", RunSecrets(oracle_headers={"Authorization": SecretStr(f"Bearer {key}")}))
        events = await IngestHandler(stage_context(services, settings, http)).handle(make_event(request), request)
    replays = [e for e in events if e.topic == "verify.replay.requested"]
    assert replays
    for event in replays:
        replay = ReplayRequested.model_validate(event.payload)
        assert replay.oracle == oracle and replay.secret_ref == "HEADS"
        assert key.encode() not in event.to_wire()
