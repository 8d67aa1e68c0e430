"""One contract for the bus's and the secrets' ports, held by the NATS JetStream Bus and the Postgres
SecretStore on this test's servers and by their in-memory twins (MemoryPublisher, MemorySecrets)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from echelon_platform.adapters.memory import MemoryPublisher, MemorySecrets
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import RunRequested, Subjects
from echelon_platform.ports.run_secrets import RunSecrets, SecretKeeper
from tests.factories import requested, run_events


@pytest.fixture(params=["memory", "nats"])
def bus(request: pytest.FixtureRequest, settings: Settings) -> Any:
    """A Publisher, RawPublisher and StreamLookup (adapters/implements.py checks both are)."""
    if request.param == "memory":
        return MemoryPublisher(Subjects(settings.subject_root, settings.partitioning))
    services: Services = request.getfixturevalue("services")
    return services.bus


@pytest.fixture(params=["memory", "postgres"])
def secrets(request: pytest.FixtureRequest) -> SecretKeeper:
    if request.param == "memory":
        return MemorySecrets()
    services: Services = request.getfixturevalue("services")
    return services.secrets


async def test_a_dedup_key_is_stored_once(bus: Any) -> None:
    event = requested("r1")
    first = await bus.publish(event)
    assert await bus.publish(event.model_copy(update={"event_id": f"{event.event_id[:-1]}Z"})) == first
    rest = run_events("r1")[1:3]
    seqs = await bus.publish_many(rest)
    assert len(set(seqs)) == 2 and min(seqs) > first
    assert await bus.publish_many(rest) == seqs
    assert bus.max_payload >= 64 * 1024


async def test_the_first_valid_event_on_a_subject_is_found(bus: Any, settings: Settings) -> None:
    subjects = Subjects(settings.subject_root, settings.partitioning)
    subject = subjects.subject(RunRequested.TOPIC, "r1")
    assert await bus.first_valid_on_subject(subject) is None
    await bus.publish_raw(subject, b"\x00not an event", msg_id="junk")
    await bus.publish_raw(subject, requested("r2").to_wire(), msg_id="another run's request")  # parked by the writer
    event = requested("r1")
    await bus.publish(event)
    found = await bus.first_valid_on_subject(subject)
    assert found is not None and found.event_id == event.event_id


async def test_a_raw_message_id_is_stored_once(bus: Any, settings: Settings) -> None:
    subject = Subjects(settings.subject_root, settings.partitioning).subject(RunRequested.TOPIC, "r1")
    first = await bus.publish_raw(subject, requested("r1").to_wire(), msg_id="decision@1")
    assert await bus.publish_raw(subject, requested("r1").to_wire(), msg_id="decision@1") == first
    assert await bus.publish_raw(subject, requested("r1").to_wire(), msg_id="decision@2") > first


async def test_secrets_are_kept_until_forgotten(secrets: SecretKeeper) -> None:
    assert (await secrets.get(None)).is_empty()
    assert (await secrets.get("unknown")).is_empty()
    stored = RunSecrets(github_token=SecretStr("ghp_x"), oracle_headers={"Authorization": SecretStr("Bearer y")})
    await secrets.put("ref-1", stored)
    got = await secrets.get("ref-1")
    assert got.github_token is not None and got.github_token.get_secret_value() == "ghp_x"
    assert {k: v.get_secret_value() for k, v in got.oracle_headers.items()} == {"Authorization": "Bearer y"}
    await secrets.delete(["ref-1"])
    assert (await secrets.get("ref-1")).is_empty()
