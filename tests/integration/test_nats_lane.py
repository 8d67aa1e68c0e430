"""The API's publish lane (echelon_platform/adapters/nats_lane.py) against real nats-servers: JetStream's own
acknowledgements and duplicates, its refusals as errors (at once, not at the time-out), a server that goes
away and comes back, and the role permissions of a server with a user per role."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from echelon.embedded import EmbeddedNats
from echelon.embedded._process import free_port
from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.nats_lane import NatsPublishLane, lane_servers
from echelon_platform.config import Settings
from echelon_platform.domain.bus_access import BusLayout
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import CertificateIssued, Subjects, make_event
from echelon_platform.errors import BusError
from tests.factories import certificate, requested


def _lane(url: str, stream: str, **kwargs: str) -> NatsPublishLane:
    servers = lane_servers(url)
    assert servers is not None
    return NatsPublishLane(servers, stream=stream, name="test-lane", **kwargs)


def test_only_plain_nats_urls_get_a_lane() -> None:
    assert lane_servers("nats://127.0.0.1:4222, nats://u:p%40ss@h2") == [
        ("127.0.0.1", 4222, None, None),
        ("h2", 4222, "u", "p@ss"),
    ]
    assert lane_servers("127.0.0.1:5000") == [("127.0.0.1", 5000, None, None)]
    assert lane_servers("nats://a:4222,tls://b:4222") is None
    assert lane_servers("ws://a:8080") is None


async def test_acks_are_jetstreams_and_a_repeated_id_is_a_duplicate(settings: Settings) -> None:
    subjects = Subjects(settings.subject_root)
    async with Bus(str(settings.nats_url), stream=settings.stream_name, subjects=subjects) as bus:
        assert bus._lane is None  # a buffering process keeps nats-py's path
        async with Bus(
            str(settings.nats_url), stream=settings.stream_name, subjects=subjects, buffer_while_reconnecting=False
        ) as api:
            assert api._lane is not None
            events = [requested(f"LANE{i}") for i in range(20)]
            acks = await asyncio.gather(*(api.publish_acked(e) for e in events))
            assert len({a.seq for a in acks}) == 20 and not any(a.duplicate for a in acks)
            for event, ack in zip(events, acks, strict=True):
                stored = await bus.js.get_msg(bus.stream, seq=ack.seq)
                assert stored.subject == subjects.for_event(event)
                assert Envelope.from_wire(stored.data or b"") == event
                assert (stored.headers or {})["Nats-Msg-Id"] == event.dedup_key
            again = await api.publish_acked(events[3])
            assert again.duplicate and again.seq == acks[3].seq
            # The same duplicate as nats-py's path sees it.
            assert (await bus.publish_acked(events[3])).seq == acks[3].seq


async def test_refusals_are_errors_at_once(settings: Settings) -> None:
    subjects = Subjects(settings.subject_root)
    async with Bus(str(settings.nats_url), stream=settings.stream_name, subjects=subjects):  # the stream exists
        lane = _lane(str(settings.nats_url), settings.stream_name)
        wrong_stream = _lane(str(settings.nats_url), "NO_SUCH_STREAM_X")
        try:
            started = time.monotonic()
            with pytest.raises(BusError, match="no responders"):
                await lane.publish("nobody.listens.here", b"{}", "id-1", timeout=5)
            with pytest.raises(BusError, match="JetStream refused"):
                await wrong_stream.publish(f"{settings.subject_root}.x", b"{}", "id-2", timeout=5)
            with pytest.raises(BusError, match="line break"):
                await lane.publish(f"{settings.subject_root}.x", b"{}", "id\r\nNats-Expected-Stream: X", timeout=5)
            assert time.monotonic() - started < 2  # answered, not timed out
            ack = await lane.publish(f"{settings.subject_root}.lane.ok", b"{}", "id-3", timeout=5)
            assert ack.seq > 0 and not ack.duplicate  # the connection is still in step
        finally:
            await lane.close()
            await wrong_stream.close()


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path / "nats", port=free_port()) as server:
        yield server


async def test_a_server_that_goes_fails_the_publish_and_one_that_comes_back_is_used_again(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    subjects = Subjects(settings.subject_root)
    async with Bus(own_nats.url, stream=settings.stream_name, subjects=subjects):
        pass  # the stream, on this server's disk
    lane = _lane(own_nats.url, settings.stream_name)
    try:
        first = await lane.publish(f"{settings.subject_root}.a", b"{}", "before", timeout=5)
        await own_nats.stop()  # the real process: the lane's connection is closed under it
        started = time.monotonic()
        with pytest.raises(BusError):
            await lane.publish(f"{settings.subject_root}.a", b"{}", "during", timeout=5)
        assert time.monotonic() - started < 5
        await own_nats.start()
        after = await lane.publish(f"{settings.subject_root}.a", b"{}", "after", timeout=5)
        assert after.seq == first.seq + 1  # "during" was never stored
    finally:
        await lane.close()


LAYOUT = BusLayout(stream="LANEPERMS", subject_root="laneperms", consumer_prefix="laneperms")


async def test_the_api_role_may_publish_its_topics_only(tmp_path: Path) -> None:
    subjects = Subjects(LAYOUT.subject_root)
    async with EmbeddedNats(tmp_path / "nats", auth=LAYOUT) as server:
        credentials = server.credentials()

        def as_role(role: str, **options: bool) -> Bus:
            return Bus(
                server.url, stream=LAYOUT.stream, subjects=subjects, user=role, password=credentials[role], **options
            )

        async with as_role("setup", provisions=True):
            pass
        async with as_role("api", buffer_while_reconnecting=False) as api:
            assert api._lane is not None
            assert not (await api.publish_acked(requested("PERM1"))).duplicate
            # A certificate is the certifier's to publish.
            forged = make_event(CertificateIssued(run_id="PERM2", certificate=certificate("PERM2")))
            started = time.monotonic()
            with pytest.raises(BusError, match=r"(?i)permissions violation"):
                await api.publish_acked(forged)
            assert time.monotonic() - started < 3
            assert not (await api.publish_acked(requested("PERM3"))).duplicate  # still connected
        lane = _lane(server.url, LAYOUT.stream, user="api", password="wrong")
        try:
            with pytest.raises(BusError, match=r"(?i)authorization"):
                await lane.publish(f"{LAYOUT.subject_root}.x", b"{}", "id", timeout=5)
        finally:
            await lane.close()


async def test_a_publish_nobody_acknowledges_times_out_and_the_lane_goes_on(settings: Settings) -> None:
    """A core subscriber on the subject answers nothing (and so no 503 either): the publish fails at its
    time-out and its connection is dropped (as one that died without a word would be); the next publish
    connects again and is acknowledged as usual."""
    subjects = Subjects(settings.subject_root)
    quiet = f"quiet{settings.subject_root}"
    async with Bus(str(settings.nats_url), stream=settings.stream_name, subjects=subjects) as bus:
        subscription = await bus.nc.subscribe(f"{quiet}.>")
        await bus.nc.flush()
        lane = _lane(str(settings.nats_url), settings.stream_name)
        try:
            await lane.start()
            stuck = lane._connection
            started = time.monotonic()
            with pytest.raises(BusError, match="in time"):
                await lane.publish(f"{quiet}.x", b"{}", "quiet-1", timeout=0.3)
            assert 0.3 <= time.monotonic() - started < 3
            ack = await lane.publish(f"{settings.subject_root}.lane.after", b"{}", "quiet-2", timeout=5)
            assert ack.seq > 0 and lane._connection is not stuck
        finally:
            await subscription.unsubscribe()
            await lane.close()
