"""A rebuild equals live; tail follows with an ephemeral consumer; parked events can be re-driven."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

from coordinator.admission import TrustedKeys
from coordinator.assembly import coordinator_for
from coordinator.rebuild import Rebuilder, snapshot, verify
from echelon.tail import tail
from echelon_platform.adapters.readmodel_store import Keys
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import utcnow
from echelon_platform.domain.events import RatingSubmitted, RunCompleted, RunFailed, make_event
from tests.factories import run_events


async def drain(services: Services, settings: Settings) -> None:
    async with coordinator_for(services, settings) as coordinator:
        await coordinator.run(until_idle=True)


async def _history(services: Services) -> None:
    for i in range(6):
        run_id = f"REPLAY{i}"
        events = run_events(run_id, n=3, failed=i % 3, user="alice" if i % 2 else "bob")
        if i % 3 == 0:
            events.append(make_event(RunCompleted(run_id=run_id, certificate_id=f"cert-{run_id}")))
        elif i == 5:
            events.append(make_event(RunFailed(run_id=run_id, reason="All replays failed", stage="certify")))
        for e in events:
            await services.bus.publish(e)
    for rating in (3, 5):  # the second rating replaces the first
        await services.bus.publish(
            make_event(
                RatingSubmitted(
                    run_id="REPLAY0",
                    rating_id=f"r{rating}",
                    certificate_id="cert-REPLAY0",
                    replay_id="REPLAY0-0000",
                    user_id="carol",
                    rating=rating,
                    rated_at=utcnow(),
                )
            )
        )


async def test_flush_rebuild_and_compare_with_live(services: Services, settings: Settings) -> None:
    await _history(services)
    await drain(services, settings)
    async with Projector(str(settings.redis_url), settings.redis_prefix) as projector:
        live_keys = await projector.keys()
        live = await snapshot(projector, live_keys)
        assert len(live) > 10
        assert (await verify(services.store, projector, services.settings)).differences == []

        # Flush every read model, rebuild from the log, and compare with what the live coordinator made.
        await projector.redis.unlink(*[k async for k in projector.redis.scan_iter(match=live_keys.pattern)])
        assert await services.read_models.get_run("REPLAY1") is None
        report = await Rebuilder(
            services.store, projector, TrustedKeys.published(services.store, services.settings)
        ).rebuild()
        assert report.runs == 6
        rebuilt = await snapshot(projector, Keys(settings.redis_prefix, report.namespace))
        assert rebuilt == live
        state = await services.read_models.get_run("REPLAY1")  # readers switched to the new namespace
        assert state is not None and state.progress == 3
        ratings = await services.read_models.ratings(certificate_id="cert-REPLAY0", user_id=None)
        assert [r["rating"] for r in ratings] == [5]


async def test_verify_reports_a_tampered_read_model(services: Services, settings: Settings) -> None:
    await _history(services)
    await drain(services, settings)
    async with Projector(str(settings.redis_url), settings.redis_prefix) as projector:
        keys = await projector.keys()
        await projector.redis.set(keys.run("REPLAY2"), b'{"tampered": true}')
        report = await verify(services.store, projector, services.settings)
    assert report.differences == ["differs: run:REPLAY2"]


async def test_tail_prints_one_line_per_event_without_a_durable_consumer(
    services: Services, settings: Settings
) -> None:
    events = run_events("TAILED", n=1, failed=0)
    for e in events:
        await services.bus.publish(e)
    out = io.StringIO()
    printed = await tail(services.bus, services.subjects.of_run("TAILED"), from_start=True, out=out, limit=len(events))
    lines = out.getvalue().splitlines()
    assert printed == len(events) == len(lines)
    assert "verify.run.requested" in lines[0] and "run=TAILED" in lines[0]
    assert "precision=0.500" in lines[3]
    consumers = [c async for c in _durables(services)]
    assert consumers == []


async def _durables(services: Services) -> AsyncIterator[str]:
    for info in await services.bus.js.consumers_info(services.bus.stream):
        if info.config.durable_name:
            yield info.config.durable_name


async def test_parked_event_can_be_fixed_and_redriven(services: Services, settings: Settings) -> None:
    from coordinator.decode import RETRY_HEADER

    good = run_events("PARK", n=1, failed=0)[0]
    subject = services.subjects.for_event(good)
    await services.bus.publish_raw(subject, good.to_wire()[:-5], msg_id="truncated")
    await drain(services, settings)
    [parked] = await services.store.parked()
    assert "malformed envelope" in parked.reason

    # An operator re-drives it (here: after the producer was fixed, the same id now carries good bytes).
    await services.bus.publish_raw(subject, good.to_wire(), msg_id="fixed", headers={RETRY_HEADER: str(parked.id)})
    await drain(services, settings)
    assert await services.store.parked() == []
    assert [p.id for p in await services.store.parked(include_retried=True)] == [parked.id]
    assert await services.read_models.get_run("PARK") is not None
