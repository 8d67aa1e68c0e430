"""The single writer on real NATS/Postgres/Redis: idempotent appends, poison parking, crash safety."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson
import pytest

from coordinator.admission import Admission, TrustedKeys
from coordinator.assembly import coordinator_for
from coordinator.writer import StateCoordinator
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import CertificateIssued, RunCompleted, make_event
from tests.factories import certificate, requested, run_events
from tests.helpers import certifier_keyring, wait_for


async def rows(settings: Settings, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


async def drain(services: Services, settings: Settings) -> StateCoordinator:
    async with coordinator_for(services, settings) as coordinator:
        await coordinator.run(until_idle=True)
    return coordinator


async def test_events_are_appended_in_order_and_projected(services: Services, settings: Settings) -> None:
    events = run_events("RUNA", n=3, failed=1)
    for e in events:
        await services.bus.publish(e)
    coordinator = await drain(services, settings)
    # The coordinator itself announces that every replay is done (the certifier's trigger).
    assert coordinator.stats.appended == len(events) + 1
    stored = await rows(settings, "SELECT event_id, topic, stream_seq FROM events ORDER BY seq")
    assert [r["event_id"] for r in stored[:-1]] == [e.event_id for e in events]
    assert stored[-1]["topic"] == "verify.run.certifying"
    assert [r["stream_seq"] for r in stored] == sorted(r["stream_seq"] for r in stored)
    state = await services.read_models.get_run("RUNA")
    assert state is not None
    assert (state.progress, state.total, state.status.name) == (3, 3, "CERTIFYING")


async def test_same_event_twice_gives_one_row_and_one_effect(services: Services, settings: Settings) -> None:
    first = requested("RUNB")
    await services.bus.publish(first)
    await services.bus.publish(first)  # inside the duplicate window: JetStream drops it
    # Past the window (simulated with another Nats-Msg-Id) with a new event id but the same dedup key.
    again = first.model_copy(update={"event_id": "01JZZZZZZZZZZZZZZZZZZZZZZZ"})
    await services.bus.publish_raw(services.subjects.for_event(again), again.to_wire(), msg_id="other-id")
    coordinator = await drain(services, settings)
    assert coordinator.stats.received == 2
    assert coordinator.stats.appended == 1 and coordinator.stats.duplicates == 1
    assert len(await rows(settings, "SELECT 1 FROM events")) == 1
    listed, total = await services.read_models.list_runs(user_id="alice")
    assert total == 1 and listed[0].run_id == "RUNB"


async def test_poison_is_parked_and_does_not_stop_the_writer(services: Services, settings: Settings) -> None:
    subject = f"{settings.subject_root}.run.requested.RUNC"
    await services.bus.publish_raw(subject, b"{not json", msg_id="p1")
    bad_payload = requested("RUNC").model_dump(by_alias=True)
    bad_payload["payload"]["limit"] = "many"
    await services.bus.publish_raw(subject, orjson.dumps(bad_payload), msg_id="p2")
    await services.bus.publish(requested("RUNC"))
    coordinator = await drain(services, settings)
    assert coordinator.stats.parked == 2
    parked = await services.store.parked()
    assert parked[0].raw == b"{not json"
    assert "limit" in parked[1].reason
    assert await services.read_models.get_run("RUNC") is not None


async def test_a_naive_timestamp_is_parked_not_a_crash_loop(services: Services, settings: Settings) -> None:
    """A time without a zone used to pass validation, then fail projection on every redelivery."""
    naive = requested("RUNN").model_dump(by_alias=True, mode="json")
    naive["timestamp"] = "2026-11-30T12:00:00"
    await services.bus.publish_raw(f"{settings.subject_root}.run.requested.RUNN", orjson.dumps(naive), msg_id="n1")
    later = requested("RUNM")
    await services.bus.publish(later)
    coordinator = await drain(services, settings)
    assert coordinator.stats.parked == 1
    [parked] = await services.store.parked()
    assert "timestamp" in parked.reason and "timezone" in parked.reason.lower()
    assert await services.read_models.get_run("RUNM") is not None  # the batch went on


async def test_crash_between_append_and_ack_loses_and_doubles_nothing(services: Services, settings: Settings) -> None:
    settings = settings.model_copy(update={"ack_wait_s": 1.0})
    events = run_events("RUND", n=2, failed=0)
    for e in events:
        await services.bus.publish(e)

    class DiesBeforeProjecting(Projector):
        async def project(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            raise asyncio.CancelledError  # the process dies here: appended, not projected, not acked

    async with DiesBeforeProjecting(str(settings.redis_url), settings.redis_prefix) as dying:
        crashing = StateCoordinator(
            bus=services.bus,
            store=services.store,
            projector=dying,
            metrics=services.metrics,
            durable=f"{settings.consumer_prefix}-coordinator",
            fetch_timeout_s=0.2,
            ack_wait_s=1.0,
            admission=Admission(services.store, TrustedKeys.published(services.store, settings)),
        )
        with pytest.raises(asyncio.CancelledError):
            await crashing.run(until_idle=True)
    assert len(await rows(settings, "SELECT 1 FROM events")) == len(events)
    assert await services.read_models.get_run("RUND") is None

    async with coordinator_for(services, settings) as coordinator:

        async def redelivered_and_projected() -> bool:
            await coordinator.run(until_idle=True)
            state = await services.read_models.get_run("RUND")
            return state is not None and state.progress == 2

        await wait_for(redelivered_and_projected, timeout=15, what="redelivery after ack_wait")
    stored = await rows(settings, "SELECT event_id FROM events WHERE topic <> 'verify.run.certifying'")
    assert sorted(r["event_id"] for r in stored) == sorted(e.event_id for e in events)
    # The restarted writer caught its read models up from the log at start (no operator step, no wait
    # for redelivery); redelivered events are duplicates; the one new row is the certifier trigger.
    assert coordinator.stats.appended == 1


async def test_terminal_event_makes_the_run_inactive(services: Services, settings: Settings) -> None:
    cert = certificate("RUNE", await certifier_keyring(services.store, settings))
    for e in [
        *run_events("RUNE", n=1, failed=0),
        make_event(CertificateIssued(run_id="RUNE", certificate=cert)),
        make_event(RunCompleted(run_id="RUNE", certificate_id=cert.certificate_id)),
    ]:
        await services.bus.publish(e)
    await drain(services, settings)
    state = await services.read_models.get_run("RUNE")
    assert state is not None and state.status.name == "COMPLETED"
    assert await services.read_models.active_runs(float("inf")) == []
