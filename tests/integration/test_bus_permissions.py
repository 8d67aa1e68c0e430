"""JetStream API permissions on a real nats-server with a user per role (bus_access.py).

Every attack is tried with the credentials of one role (mostly `api`, the one exposed to the internet) on
both server versions we support: the embedded wheel's and the machine's 2.9 when installed."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from echelon.embedded import EmbeddedNats
from echelon.embedded._nats import find_nats_server
from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.bus_follower import StreamFollower
from echelon_platform.adapters.bus_puller import BatchPuller
from echelon_platform.domain.bus_access import BusLayout, stage_durable, writer_durable
from echelon_platform.domain.events import CertificateIssued, Subjects, make_event
from echelon_platform.errors import SetupMissing
from tests.factories import certificate, requested
from tests.helpers import wait_for

LAYOUT = BusLayout(stream="PERMS", subject_root="perms", consumer_prefix="perms")
SUBJECTS = Subjects(LAYOUT.subject_root)
COORDINATOR = writer_durable(LAYOUT.consumer_prefix, LAYOUT.partitioning, 0)
INGEST = stage_durable(LAYOUT.consumer_prefix, "ingest")


def _binaries() -> list[Path]:
    found = [find_nats_server()]
    system = shutil.which("nats-server", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if system is not None and Path(system).resolve() != found[0].resolve():
        found.append(Path(system))
    return found


@pytest.fixture(params=_binaries(), ids=lambda p: str(p))
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path / "nats", auth=LAYOUT, executable=request.param) as nats_server:
        yield nats_server


def _bus(server: EmbeddedNats, role: str) -> Bus:
    return Bus(
        server.url,
        stream=LAYOUT.stream,
        subjects=SUBJECTS,
        user=role,
        password=server.credentials()[role],
        provisions=role == "setup",
    )


async def _set_up(server: EmbeddedNats) -> None:
    """What `echelon setup` does, for this layout: the stream, the writer's and the ingest consumer."""
    async with _bus(server, "setup") as bus:
        await bus.ensure_consumer(COORDINATOR, SUBJECTS.everything)
        await bus.apply_consumer(INGEST, SUBJECTS.topic_filter("verify.run.requested"))


class Client:
    """A raw NATS connection as one role, collecting the server's permission errors."""

    def __init__(self, server: EmbeddedNats, role: str) -> None:
        self.server = server
        self.role = role
        self.errors: list[str] = []
        self.nc: NATS | None = None

    async def __aenter__(self) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            self.server.url, user=self.role, password=self.server.credentials()[self.role], error_cb=on_error
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.nc is not None
        await self.nc.close()

    async def refused(self, subject: str, body: dict[str, object] | None = None) -> None:
        """The server drops the request and says so: no JetStream answer, a permissions violation."""
        assert self.nc is not None
        with pytest.raises(nats.errors.TimeoutError):
            await self.nc.request(subject, json.dumps(body or {}).encode(), timeout=1.0)
        await wait_for(
            lambda: any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in self.errors),
            timeout=5,
            what=f"a permissions violation for {subject} (errors: {self.errors})",
        )


async def _certificate_on_stream(bus: Bus) -> int:
    async with StreamFollower(bus, SUBJECTS.topic_filter("verify.certificate.issued")) as follower:
        return 0 if await follower.next(timeout=0.5) is None else 1


async def test_the_republish_attack_is_refused(server: EmbeddedNats) -> None:
    await _set_up(server)
    evil = {
        "name": "EVIL",
        "subjects": ["_INBOX.evil.*"],
        "storage": "memory",
        "republish": {"src": ">", "dest": "perms.certificate.issued.{{wildcard(1)}}"},
    }
    async with Client(server, "api") as api:
        await api.refused("$JS.API.STREAM.CREATE.EVIL", {**evil})
        # Nor into our own stream, nor a mirror or sources feeding it.
        await api.refused(f"$JS.API.STREAM.UPDATE.{LAYOUT.stream}", {"name": LAYOUT.stream, "republish": evil})
        await api.refused("$JS.API.STREAM.CREATE.SRC", {"name": "SRC", "sources": [{"name": LAYOUT.stream}]})
        # Even had a stream existed, the api may not publish the forged certificate into the inbox space.
        forged = make_event(CertificateIssued(run_id="RUN1", certificate=certificate("RUN1")))
        assert api.nc is not None
        await api.nc.publish("_INBOX.evil.RUN1", forged.to_wire())
        await wait_for(
            lambda: any("_inbox.evil.run1" in e.lower() for e in api.errors), timeout=5, what="the inbox refusal"
        )
    for role in ("ingest", "stages", "score", "invoke", "coordinator", "reader", "operator", "certify"):
        async with Client(server, role) as client:
            await client.refused("$JS.API.STREAM.CREATE.EVIL", evil)
    async with _bus(server, "reader") as reader:
        assert await _certificate_on_stream(reader) == 0


async def test_purge_and_delete_of_the_stream_are_refused(server: EmbeddedNats) -> None:
    await _set_up(server)
    async with _bus(server, "api") as api_bus:
        await api_bus.publish(requested("R1"))
        async with Client(server, "api") as api:
            await api.refused(f"$JS.API.STREAM.PURGE.{LAYOUT.stream}")
            await api.refused(f"$JS.API.STREAM.DELETE.{LAYOUT.stream}")
        async with Client(server, "setup") as setup:  # not even setup may destroy the log
            await setup.refused(f"$JS.API.STREAM.PURGE.{LAYOUT.stream}")
            await setup.refused(f"$JS.API.STREAM.DELETE.{LAYOUT.stream}")
        assert await api_bus.last_sequence() == 1


async def test_other_roles_consumers_cannot_be_deleted_changed_or_pulled(server: EmbeddedNats) -> None:
    await _set_up(server)
    async with _bus(server, "api") as api_bus:
        await api_bus.publish(requested("R1"))
        async with Client(server, "api") as api:
            await api.refused(f"$JS.API.CONSUMER.DELETE.{LAYOUT.stream}.{INGEST}")
            await api.refused(f"$JS.API.CONSUMER.MSG.NEXT.{LAYOUT.stream}.{COORDINATOR}", {"batch": 10})
            # An "ephemeral" create naming an existing durable would re-configure it: no create at all.
            config = {"name": COORDINATOR, "ack_policy": "explicit", "max_ack_pending": 1}
            await api.refused(
                f"$JS.API.CONSUMER.CREATE.{LAYOUT.stream}", {"stream_name": LAYOUT.stream, "config": config}
            )
            await api.refused(f"$JS.ACK.{LAYOUT.stream}.{COORDINATOR}.1.1.1.1.0")
        async with Client(server, "coordinator") as coordinator:  # its own durables only
            await coordinator.refused(f"$JS.API.CONSUMER.DELETE.{LAYOUT.stream}.{INGEST}")
        async with Client(server, "stages") as stages:
            await stages.refused(f"$JS.API.CONSUMER.MSG.NEXT.{LAYOUT.stream}.{COORDINATOR}", {"batch": 10})
        info = await api_bus.js.consumer_info(LAYOUT.stream, COORDINATOR)  # reading its info is allowed
        assert info.delivered.stream_seq == 0 and info.num_pending == 1 and info.config.max_ack_pending != 1
        assert await api_bus.consumer_exists(INGEST)


async def test_each_role_does_its_own_work(server: EmbeddedNats) -> None:
    await _set_up(server)
    request = requested("R1")
    async with _bus(server, "api") as api_bus, _bus(server, "ingest") as ingest_bus:
        await api_bus.publish(request)
        assert await api_bus.first_valid_on_subject(SUBJECTS.subject("verify.run.requested", "R1")) == request
        # A stage: binds to the consumer setup made, fetches and acks.
        sub = await ingest_bus.pull_subscription(INGEST, SUBJECTS.topic_filter("verify.run.requested"))
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack_sync()
        await sub.close()
        assert (await ingest_bus.js.consumer_info(LAYOUT.stream, INGEST)).num_ack_pending == 0
        # The coordinator: fetches through the lean puller, and rewinds (deletes and re-creates) its own.
        async with _bus(server, "coordinator") as coordinator_bus:
            async with BatchPuller(coordinator_bus.nc, stream=LAYOUT.stream, durable=COORDINATOR) as puller:
                [delivered] = await puller.fetch(10, timeout=2)
            assert await coordinator_bus.rewind_consumer(COORDINATOR, SUBJECTS.everything) == 0
            assert (await coordinator_bus.js.consumer_info(LAYOUT.stream, COORDINATOR)).num_ack_pending == 0
            async with BatchPuller(coordinator_bus.nc, stream=LAYOUT.stream, durable=COORDINATOR) as puller:
                [again] = await puller.fetch(10, timeout=2)
                await again.ack_sync()
            assert delivered.data == again.data
        # A reader follows the stream by direct gets: history, then what is published while it waits.
        async with _bus(server, "reader") as reader, StreamFollower(reader, SUBJECTS.everything) as follower:
            first = await follower.next(timeout=5)
            assert first is not None and first.seq == 1 and first.data == request.to_wire()
            later = asyncio.create_task(follower.next(timeout=10))
            await api_bus.publish(requested("R2"))
            second = await later
            assert second is not None and second.seq == 2


async def test_a_role_whose_stream_or_consumer_is_missing_stops(server: EmbeddedNats) -> None:
    # No setup yet: a role may not create the stream, and says what to run.
    with pytest.raises(SetupMissing, match="echelon setup"):
        async with _bus(server, "api"):
            pass
    await _set_up(server)
    async with _bus(server, "ingest") as ingest_bus:
        await (await ingest_bus.pull_subscription(INGEST, SUBJECTS.topic_filter("verify.run.requested"))).close()
        async with Client(server, "setup") as setup:  # setup re-creates consumers (a migration): gone a moment
            assert setup.nc is not None
            await setup.nc.request(f"$JS.API.CONSUMER.DELETE.{LAYOUT.stream}.{INGEST}", b"", timeout=5)
        assert not await ingest_bus.consumer_exists(INGEST)
        with pytest.raises(SetupMissing, match=INGEST):
            await ingest_bus.pull_subscription(INGEST, SUBJECTS.topic_filter("verify.run.requested"))
    # The coordinator owns its consumer and re-creates it (see test_coordinator_recreates_its_consumer).
    async with _bus(server, "coordinator") as coordinator_bus:
        await coordinator_bus.js.delete_consumer(LAYOUT.stream, COORDINATOR)
        assert not await coordinator_bus.consumer_exists(COORDINATOR)
        await coordinator_bus.ensure_consumer(COORDINATOR, SUBJECTS.everything)
        assert await coordinator_bus.consumer_exists(COORDINATOR)


async def test_an_answer_sent_into_a_consumers_inbox_is_not_an_event(server: EmbeddedNats) -> None:
    """Any user may make a request it is allowed with someone else's inbox as the reply subject: the server's
    answer (here a stored message) lands there. The writer must not take it for a delivery of its consumer."""
    await _set_up(server)
    async with _bus(server, "api") as api_bus, _bus(server, "coordinator") as coordinator_bus:
        await api_bus.publish(requested("R1"))
        async with BatchPuller(coordinator_bus.nc, stream=LAYOUT.stream, durable=COORDINATOR) as puller:
            [real] = await puller.fetch(10, timeout=2)
            await real.ack_sync()
            inbox = f"{puller._inbox}.{puller._current}"  # an attacker subscribed to _INBOX.> sees it
            body = json.dumps({"seq": 1}).encode()
            await api_bus.nc.publish(f"$JS.API.DIRECT.GET.{LAYOUT.stream}", body, reply=inbox)
            await api_bus.nc.publish(f"$JS.API.STREAM.INFO.{LAYOUT.stream}", b"", reply=inbox)
            await api_bus.nc.flush()
            assert await puller.fetch(10, timeout=1) == []
