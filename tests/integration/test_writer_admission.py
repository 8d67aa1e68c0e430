"""What the single writer logs, on real NATS/Postgres/Redis: only certificates a published key signed, only
events on their own subject with their natural dedup key and within their topic's size, only events of runs
that were requested. Everything else is parked with its reason and takes nobody's place."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.admission import TrustedKeys
from coordinator.assembly import coordinator_for
from coordinator.rebuild import Rebuilder, verify
from echelon_platform.adapters.readmodel_writer import Projector
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import GENERATED_KEY, Keyring
from echelon_platform.config import Settings
from echelon_platform.domain.certificate import build_certificate
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    CertificateIssued,
    RunCertifying,
    RunFailed,
    RunIngesting,
    make_event,
    parse_payload,
)
from echelon_platform.domain.values import CalibrationCertificate, ReplayScore
from pipeline_workers.handlers.certify import CertifyHandler
from tests.factories import T0, certificate, requested, run_events
from tests.helpers import certifier_keyring, wait_for
from tests.integration.test_api_support import API, app, client, drain, options

__all__ = ["app", "client", "options"]  # fixtures


def perfect_certificate(run_id: str) -> CalibrationCertificate:
    """What a forger wants on the leaderboard: composite 1.0, numbers consistent, hash right."""
    scores = [
        ReplayScore(
            replay_id=f"{run_id}-{i:04d}",
            ground_truth_id=f"pr-{i}",
            precision=1.0,
            recall=1.0,
            reply_accuracy=1.0,
            claims_total=4,
            claims_supported=4,
            changes_total=4,
            changes_surfaced=4,
            scoring_model="offline-lexical-v1",
            scoring_latency_ms=1.0,
            scored_at=T0,
        )
        for i in range(2)
    ]
    return build_certificate(
        run_id=run_id,
        construct_id="oracle-a",
        scores=scores,
        failed=[],
        weights=None,
        min_replays=1,
        ground_truth_source="github",
        commit_range="a..b",
        methodology_version="v1",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
    )


async def publish_as_anyone(services: Services, event: Envelope, msg_id: str) -> None:
    """A publish by an identity with no role restrictions (what a role that found a way around its NATS
    permissions could do), on the run's own certificate subject."""
    await services.bus.publish_raw(services.subjects.for_event(event), event.to_wire(), msg_id=msg_id)


async def parked_reasons(services: Services) -> list[str]:
    return [p.reason for p in await services.store.parked()]


async def test_forged_certificates_are_parked_and_the_genuine_one_completes_the_run(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    keyring = await certifier_keyring(services.store, settings)
    for event in run_events("GENUINE", n=2, failed=0):
        await services.bus.publish(event)
    await drain(services, settings)

    fresh_key = Keyring(Ed25519PrivateKey.generate(), datetime.now(UTC), [])
    signed_by_stranger = fresh_key.sign(perfect_certificate("GENUINE"))
    unsigned = perfect_certificate("GENUINE")
    # A certificate the real key signed, with its composite raised afterwards: the signature no longer holds.
    tampered = certificate("GENUINE", keyring).model_copy(update={"composite_score": 1.0})
    forgeries = [make_event(CertificateIssued(run_id="GENUINE", certificate=c)) for c in (signed_by_stranger, unsigned)]
    forgeries.append(make_event(CertificateIssued(run_id="GENUINE", certificate=tampered)))
    for i, forged in enumerate(forgeries):
        # Same run, same subject, same dedup key as the genuine certificate, and logged first if admitted.
        assert forged.dedup_key == "verify.certificate.issued:GENUINE"
        await publish_as_anyone(services, forged, msg_id=f"forged-{i}")
    await drain(services, settings)

    certifying = make_event(RunCertifying(run_id="GENUINE", total=2))
    genuine = await CertifyHandler(services.store, keyring).handle(certifying, parse_payload(certifying))
    for event in genuine:
        await services.bus.publish(event)
    await drain(services, settings)

    reasons = await parked_reasons(services)
    assert len(reasons) == 3, reasons
    assert "not a published signing key" in reasons[0]
    assert "unsigned certificate" in reasons[1]
    assert "does not verify" in reasons[2]
    logged = await services.store.run_events("GENUINE", ["verify.certificate.issued"])
    assert [e.event_id for e in logged] == [genuine[0].event_id]
    state = await services.read_models.get_run("GENUINE")
    assert state is not None and state.status.name == "COMPLETED"
    genuine_composite = genuine[0].payload["certificate"]["composite_score"]
    assert genuine_composite < 1.0
    shown = (await client.get(f"{API}/certificates/cert-GENUINE")).json()
    assert shown["composite_score"] == genuine_composite
    assert (await client.get(f"{API}/certificates/cert-GENUINE/verify")).json()["valid"] is True
    listed = (await client.get(f"{API}/certificates", params={"sort": "composite_desc"})).json()
    assert [(c["id"], c["composite_score"]) for c in listed["certificates"]] == [("cert-GENUINE", genuine_composite)]
    board = (await client.get(f"{API}/stats")).json()["rows"]
    assert [(row["key"], row["mean_composite"]) for row in board] == [("oracle-a", genuine_composite)]


async def test_a_forged_certificate_already_in_an_old_log_is_left_out_of_a_rebuild(
    services: Services, settings: Settings
) -> None:
    """A log written before the writer checked signatures: the rebuild folds the forgery as if absent."""
    await certifier_keyring(services.store, settings)
    for event in run_events("OLD", n=2, failed=0):
        await services.bus.publish(event)
    await drain(services, settings)
    forged = make_event(CertificateIssued(run_id="OLD", certificate=perfect_certificate("OLD")))
    await services.store.append_batch([(forged, 10_000)])  # as an old writer appended it
    async with Projector(str(settings.redis_url), settings.redis_prefix) as projector:
        rebuilder = Rebuilder(services.store, projector, TrustedKeys.published(services.store, services.settings))
        await rebuilder.rebuild()
    assert await services.read_models.get_certificate("cert-OLD") is None
    certs, total = await services.read_models.list_certificates(limit=10)
    assert total == 0 and certs == []
    state = await services.read_models.get_run("OLD")
    assert state is not None and state.status.name == "CERTIFYING"
    assert rebuilder.skipped_certificates == 1


async def test_an_envelope_on_another_runs_subject_or_with_a_foreign_dedup_key_is_parked(
    services: Services, settings: Settings
) -> None:
    # Run A's request on run B's subject, before B's own: until B's request is logged, stages and the API
    # read it from the stream, and must never take A's for it.
    b_requested = services.subjects.subject("verify.run.requested", "RUNB")
    await services.bus.publish_raw(b_requested, requested("RUNA").to_wire(), msg_id="a-on-b")
    for run_id in ("RUNA", "RUNB"):
        await services.bus.publish(requested(run_id))
    first = await services.bus.first_valid_on_subject(b_requested)
    assert first is not None and first.run_id == "RUNB"
    await services.bus.publish(make_event(RunIngesting(run_id="RUNA", source="github")))
    # Run A's event on run B's subject (which B's publisher may write), and on A's own subject with a dedup
    # key of its own making: either would give A a second run.ingesting.
    stray = make_event(RunIngesting(run_id="RUNA", source="elsewhere"))
    b_subject = services.subjects.subject(stray.topic, "RUNB")
    await services.bus.publish_raw(b_subject, stray.to_wire(), msg_id="stray-1")
    rekeyed = stray.model_copy(update={"dedup_key": "verify.run.ingesting:RUNA-again"})
    await publish_as_anyone(services, rekeyed, msg_id="stray-2")
    await drain(services, settings)

    reasons = await parked_reasons(services)
    assert len(reasons) == 3, reasons
    assert f"verify.run.requested of run RUNA published on {b_requested}" in reasons[0]
    assert f"published on {b_subject}" in reasons[1]
    assert "is not the event's natural key 'verify.run.ingesting:RUNA'" in reasons[2]
    ingesting = await services.store.run_events("RUNA", ["verify.run.ingesting"])
    assert [e.payload["source"] for e in ingesting] == ["github"]
    assert await services.store.run_events("RUNB", ["verify.run.ingesting"]) == []


async def test_events_of_a_run_never_requested_are_parked_and_replay_counts_no_phantom(
    services: Services, settings: Settings
) -> None:
    await services.bus.publish(requested("REAL"))
    await services.bus.publish(make_event(RunFailed(run_id="GHOST", reason="made up", stage="invoke")))
    await drain(services, settings.model_copy(update={"unknown_run_grace_s": 0}))  # no wait for a request

    [reason] = await parked_reasons(services)
    assert "run GHOST, which was never requested" in reason
    assert await services.store.run_events("GHOST") == []
    assert await services.read_models.get_run("GHOST") is None
    async with Projector(str(settings.redis_url), settings.redis_prefix) as projector:
        report = await verify(services.store, projector, services.settings)
    assert report.runs == 1 and report.differences == []


async def test_a_run_requested_in_the_same_batch_or_an_earlier_one_is_known(
    services: Services, settings: Settings
) -> None:
    """At-least-once and batching: a run's later events are never parked because its request is in the
    same batch (not yet in the log) or in a batch logged before (not in the batch)."""
    for event in run_events("SAMEBATCH", n=3, failed=1):
        await services.bus.publish(event)
    await drain(services, settings)  # one batch holds the request and everything after it
    small = settings.model_copy(update={"coordinator_batch": 2})
    for event in run_events("MANYBATCHES", n=3, failed=1):
        await services.bus.publish(event)
    await drain(services, small)  # the request in the first batch, the rest in later ones

    assert await parked_reasons(services) == []
    for run_id in ("SAMEBATCH", "MANYBATCHES"):
        state = await services.read_models.get_run(run_id)
        assert state is not None and (state.progress, state.total) == (3, 3)


async def test_an_event_over_its_topics_size_limit_is_parked(services: Services, settings: Settings) -> None:
    await services.bus.publish(requested("BIG"))
    huge = make_event(RunIngesting(run_id="BIG", source="x" * 1_000_000))  # valid JSON, 1 MB
    await publish_as_anyone(services, huge, msg_id="huge-1")
    await services.bus.publish(make_event(RunIngesting(run_id="BIG", source="github")))
    await drain(services, settings)

    [reason] = await parked_reasons(services)
    assert "verify.run.ingesting of 1000" in reason and "over the topic's limit of 16384 bytes" in reason
    ingesting = await services.store.run_events("BIG", ["verify.run.ingesting"])
    assert [e.payload["source"] for e in ingesting] == ["github"]  # the real one took its place


async def test_a_key_published_after_the_writer_read_the_keys_is_found(services: Services, settings: Settings) -> None:
    """A certify stage restarted with a new key publishes it, then signs with it: the writer, holding the
    old key set in its cache, reads the keys again for the unknown key id instead of parking the genuine."""
    old = await certifier_keyring(services.store, settings)
    # A rotation: the old key (listed as retired, with its private half) endorses the new one.
    rotated = {
        "data_dir": settings.data_dir / "rotated",
        "signing_retired_key_files": [settings.data_dir / GENERATED_KEY],
        "signing_root_key_id": old.key_id,
    }
    new_settings = settings.model_copy(update=rotated)
    async with coordinator_for(services, settings) as coordinator:
        for run_id in ("BEFORE", "AFTER"):
            for event in run_events(run_id, n=2, failed=0):
                await services.bus.publish(event)
        before = certificate("BEFORE", old)
        await services.bus.publish(make_event(CertificateIssued(run_id="BEFORE", certificate=before)))
        await coordinator.run(until_idle=True)  # the writer has read the key set: the old key only
        new = await certifier_keyring(services.store, new_settings)
        assert new.key_id != old.key_id
        after = certificate("AFTER", new)
        await services.bus.publish(make_event(CertificateIssued(run_id="AFTER", certificate=after)))
        await coordinator.run(until_idle=True)
    assert await parked_reasons(services) == []
    for run_id in ("BEFORE", "AFTER"):
        assert await services.read_models.get_certificate(f"cert-{run_id}") is not None


async def test_an_event_that_overtook_its_runs_request_waits_for_it_and_is_never_parked(
    services: Services, settings: Settings
) -> None:
    """Seen under chaos: after a fault, a run's `run.ingesting` reached the writer 5 s before its own
    `run.requested` (a redelivery overtook it), was parked as "never requested", and the watchdog failed the
    healthy run. Such an event is handed back to the stream while young, and logged once the request is."""
    events = run_events("OVERTAKEN", n=2, failed=0)
    request, later = events[0], events[1:]
    for event in later:
        await services.bus.publish(event)
    await drain(services, settings)  # the request is not there yet: everything is handed back
    assert await parked_reasons(services) == []
    assert await services.store.run_events("OVERTAKEN") == []
    await services.bus.publish(request)

    async def logged_whole() -> bool:
        await drain(services, settings)
        logged = {e.event_id for e in await services.store.run_events("OVERTAKEN")}
        return {e.event_id for e in events} <= logged  # (the writer adds its own run.certifying)

    await wait_for(logged_whole, timeout=30, what="the overtaken events to be logged after their request")
    assert await parked_reasons(services) == []
    state = await services.read_models.get_run("OVERTAKEN")
    assert state is not None and (state.progress, state.total) == (2, 2)
