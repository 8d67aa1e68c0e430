"""The certifier completes a run whatever was published before a crash, and waits for a lagging log."""

from __future__ import annotations

from coordinator.assembly import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import load_keyring
from echelon_platform.config import Settings
from echelon_platform.domain.events import (
    CertificateIssued,
    RunCertifying,
    RunFailed,
    RunRequested,
    make_event,
    parse_payload,
    payload_as,
)
from pipeline_workers.handlers.certify import CertifyHandler
from pipeline_workers.stage import StageWorker
from tests.factories import run_events
from tests.helpers import certifier_keyring, wait_for


def certifier(services: Services, settings: Settings, *, max_deliver: int = 3) -> StageWorker:
    return StageWorker(
        CertifyHandler(services.store, load_keyring(settings)),
        bus=services.bus,
        metrics=services.metrics,
        durable_prefix=settings.consumer_prefix,
        max_deliver=max_deliver,
        fetch_timeout_s=0.2,
        max_wait_delay_s=0.3,
    )


async def test_certificate_issued_without_run_completed_is_completed_with_the_same_event(settings: Settings) -> None:
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        for event in run_events("HALF", 3, failed=1):
            await services.bus.publish(event)
        await coordinator.run(until_idle=True)  # appends and announces run.certifying
        certifying = make_event(RunCertifying(run_id="HALF", total=3))
        keyring = await certifier_keyring(services.store, settings)  # as the certify stage does at start
        issued, _completed = await CertifyHandler(services.store, keyring).handle(certifying, parse_payload(certifying))
        await services.bus.publish(issued)  # the crash: run.completed never went out
        await coordinator.run(until_idle=True)

        worker = certifier(services, settings)
        await worker.run(until_idle=True)
        await coordinator.run(until_idle=True)

        state = await services.read_models.get_run("HALF")
        assert state is not None and state.status.name == "COMPLETED"
        stored = await services.store.run_events("HALF", ["verify.certificate.issued", "verify.run.completed"])
        assert [e.topic for e in stored] == ["verify.certificate.issued", "verify.run.completed"]
        assert stored[0].event_id == issued.event_id and stored[0].payload == issued.payload
        assert stored[1].payload["certificate_id"] == issued.payload["certificate"]["certificate_id"]


async def test_certifier_waits_for_events_not_yet_in_the_log_instead_of_failing(settings: Settings) -> None:
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        await certifier_keyring(services.store, settings)  # as the certify stage does at start
        # run.certifying arrives while the coordinator is behind: nothing of the run is in Postgres yet.
        await services.bus.publish(make_event(RunCertifying(run_id="LATE", total=3)))
        worker = certifier(services, settings, max_deliver=2)

        async def waited_past_max_deliver() -> bool:
            await worker.run(until_idle=True)
            return worker.stats.waited >= 4

        await wait_for(waited_past_max_deliver, timeout=30, what="the certifier to wait more than max_deliver times")
        assert worker.stats.dead_lettered == 0 and worker.stats.retried == 0

        for event in run_events("LATE", 3, failed=1):
            await services.bus.publish(event)
        await coordinator.run(until_idle=True)  # its own run.certifying is a duplicate of the early one

        async def completed() -> bool:
            await worker.run(until_idle=True)
            await coordinator.run(until_idle=True)
            state = await services.read_models.get_run("LATE")
            return state is not None and state.status.name == "COMPLETED"

        await wait_for(completed, timeout=30, what="the run to complete once the log caught up")
        assert worker.stats.dead_lettered == 0


async def test_ground_truth_shorter_than_asked_for_makes_a_partial_certificate(settings: Settings) -> None:
    reason = "stopped at the page budget of 10 pages (ECHELON_GITHUB_MAX_PAGES) with more pull requests listed"
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        for event in run_events("SHORT", 3, failed=0, requested_changes=20, shortfall=reason):
            await services.bus.publish(event)
        await coordinator.run(until_idle=True)
        certifying = make_event(RunCertifying(run_id="SHORT", total=3))
        issued, _completed = await CertifyHandler(services.store, load_keyring(settings)).handle(
            certifying, parse_payload(certifying)
        )
        cert = payload_as(issued, CertificateIssued).certificate
        assert cert.partial is True  # min_replays is met: only the short ground truth makes it partial
        assert cert.warning == f"found 3 of the 20 changes asked for ({reason})"


async def test_weights_that_overflow_fail_the_run_at_the_first_delivery(settings: Settings) -> None:
    """A run logged with weights of 1e308 (accepted before weights were bounded): FAILED with the reason at
    once, not an `fsum` overflow retried as if it were transient until the stage gave up."""
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        events = run_events("HUGE", 3, failed=1)
        request = payload_as(events[0], RunRequested)
        heavy = request.model_copy(update={"weights": dict.fromkeys(request.weights, 1e308)})
        events[0] = make_event(heavy)
        for event in events:
            await services.bus.publish(event)
        await coordinator.run(until_idle=True)
        worker = certifier(services, settings, max_deliver=10)
        await services.bus.publish(make_event(RunCertifying(run_id="HUGE", total=3)))
        await worker.run(until_idle=True)
        await coordinator.run(until_idle=True)

        state = await services.read_models.get_run("HUGE")
        assert state is not None and state.status.name == "FAILED"
        (failed,) = await services.store.run_events("HUGE", ["verify.run.failed"])
        reason = payload_as(failed, RunFailed).reason
        assert "weights cannot be used" in reason and "gave up after" not in reason, reason
        assert worker.stats.retried == 0
