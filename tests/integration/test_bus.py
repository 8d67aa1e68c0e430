"""The stream is created or brought in line idempotently by every process at start-up."""

from __future__ import annotations

from nats.js.api import StorageType

from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Subjects


async def test_every_process_may_ensure_the_stream_and_config_changes_apply(settings: Settings) -> None:
    subjects = Subjects(settings.subject_root)
    url = str(settings.nats_url)
    async with Bus(url, stream=settings.stream_name, subjects=subjects, duplicate_window_s=60) as first:
        async with Bus(url, stream=settings.stream_name, subjects=subjects, duplicate_window_s=60):
            pass  # a second process with the same config: no error
        async with Bus(url, stream=settings.stream_name, subjects=subjects, duplicate_window_s=90, max_age_s=3600):
            info = await first.js.stream_info(settings.stream_name)
    assert info.config.duplicate_window == 90
    assert info.config.max_age == 3600
    assert info.config.subjects == [f"{settings.subject_root}.>"]
    assert info.config.storage == StorageType.FILE


async def test_consumer_settings_reach_an_existing_consumer(settings: Settings) -> None:
    """`pull_subscribe` alone binds to an existing durable and keeps its old settings."""
    async with Services(settings, name="test") as services:
        bus = services.bus
        subject = bus.subjects.topic_filter("verify.replay.requested")
        sub = await bus.pull_subscription("upd", subject, max_deliver=3, max_ack_pending=32)
        await sub.close()
        sub = await bus.pull_subscription("upd", subject, max_deliver=-1, max_ack_pending=20_000)
        await sub.close()
        info = await bus.js.consumer_info(bus.stream, "upd")
        assert (info.config.max_deliver, info.config.max_ack_pending) == (-1, 20_000)


async def test_an_event_whose_message_id_was_taken_by_another_message_is_still_stored(settings: Settings) -> None:
    """Someone publishes first, elsewhere in the stream, under the message id a certificate will use:
    JetStream would drop the genuine certificate as a duplicate for its whole window. The bus sees that the
    stored message is not an earlier copy of the event and publishes it again under a one-off id."""
    from tests.factories import requested

    async with Services(settings, name="test-taken-id") as services:
        bus = services.bus
        victim = requested("TAKEN1")
        decoy = requested("DECOY1")
        await bus.publish_raw(bus.subjects.for_event(decoy), decoy.to_wire(), msg_id=victim.dedup_key)

        first = await bus.publish_acked(victim)
        assert not first.duplicate
        stored = await bus.js.get_msg(bus.stream, seq=first.seq)
        assert stored.subject == bus.subjects.for_event(victim)
        assert Envelope.from_wire(stored.data or b"").event_id == victim.event_id

        # A plain redelivery (no id taken) stays a duplicate: nothing is stored twice. (A redelivery of an event
        # whose id was taken is stored again; the writer appends by the event's own dedup key, once.)
        plain = requested("TAKEN2")
        [seq] = await bus.publish_many([plain])
        again = await bus.publish_acked(plain)
        assert again.duplicate and again.seq == seq
        taken = requested("TAKEN3")
        await bus.publish_raw(bus.subjects.for_event(decoy), decoy.to_wire(), msg_id=taken.dedup_key)
        [stored_seq] = await bus.publish_many([taken])
        assert (await bus.js.get_msg(bus.stream, seq=stored_seq)).subject == bus.subjects.for_event(taken)


async def test_a_stage_fetch_hands_over_the_first_arrival_and_leaves_no_request_behind(settings: Settings) -> None:
    """A stage that waits for work gets a message as soon as it arrives, and its waiting request ends there:
    messages published after the fetch returned stay on the server (for whichever worker has room) instead
    of arriving, unseen and unacknowledged, in this worker's buffer while it is busy."""
    import asyncio
    import time

    from tests.factories import requested

    async with Services(settings, name="test") as services:
        bus = services.bus
        sub = await bus.pull_subscription("quick", bus.subjects.topic_filter("verify.run.requested"))
        try:
            waiting = asyncio.create_task(sub.fetch(64, timeout=3.0))
            deadline = time.monotonic() + 5
            while not (await bus.js.consumer_info(bus.stream, "quick")).num_waiting:
                assert time.monotonic() < deadline, "the fetch never started waiting"
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await bus.publish(requested("FIRST"))
            [first] = await waiting
            assert time.monotonic() - started < 1.0  # not the 3 s the fetch may wait
            for n in range(5):
                await bus.publish(requested(f"LATER{n}"))
            info = await bus.js.consumer_info(bus.stream, "quick")
            assert (info.num_waiting, info.num_ack_pending, info.num_pending) == (0, 1, 5)
            assert len(await sub.fetch(64, timeout=1.0)) == 5  # taken when asked for
            await first.ack()
        finally:
            await sub.close()
