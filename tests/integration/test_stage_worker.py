"""The stage loop: retries a failing handler, then dead-letters with a reason; poison is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from coordinator.assembly import coordinator_for
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Payload, RunFailed, make_event
from pipeline_workers.stage import StageWorker
from tests.factories import requested
from tests.helpers import wait_for


class AlwaysBroken:
    """A stage whose dependency keeps failing (e.g. a bug or an outage)."""

    stage = "flaky"
    topic = "verify.run.requested"

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, envelope: Envelope, payload: Payload) -> Sequence[Envelope]:
        self.calls += 1
        raise RuntimeError("upstream exploded")

    def give_up(self, envelope: Envelope, payload: Payload, reason: str) -> Sequence[Envelope]:
        return [make_event(RunFailed(run_id=envelope.run_id, reason=reason, stage=self.stage))]


async def test_failing_handler_is_retried_then_dead_lettered(settings: Settings) -> None:
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        handler = AlwaysBroken()
        worker = StageWorker(
            handler,
            bus=services.bus,
            metrics=services.metrics,
            durable_prefix=settings.consumer_prefix,
            max_deliver=3,
            ack_wait_s=5,
            fetch_timeout_s=0.2,
        )
        await services.bus.publish(requested("DEAD"))
        subject = services.subjects.subject("verify.run.requested", "POISON")
        await services.bus.publish_raw(subject, b"not an envelope", msg_id="poison-1")

        async def dead_lettered() -> bool:
            await worker.run(until_idle=True)
            return worker.stats.dead_lettered == 1

        await wait_for(dead_lettered, timeout=30, what="the third attempt to dead-letter")
        assert handler.calls == 3 and worker.stats.retried == 2 and worker.stats.poison == 1

        await coordinator.run(until_idle=True)
        state = await services.read_models.get_run("DEAD")
        assert state is not None and state.status.name == "FAILED"
        assert state.error == "gave up after 3 attempts: upstream exploded"


class Holds:
    """Runs for which `hold` says so wait in the handler until the test releases them; others are handled."""

    stage = "held"
    topic = "verify.run.requested"

    def __init__(self, hold: Callable[[str], bool]) -> None:
        self.hold = hold
        self.release = asyncio.Event()
        self.inside: set[str] = set()
        self.handled: list[str] = []

    async def handle(self, envelope: Envelope, payload: Payload) -> Sequence[Envelope]:
        if self.hold(envelope.run_id):
            self.inside.add(envelope.run_id)
            await self.release.wait()
        self.handled.append(envelope.run_id)
        return []

    def give_up(self, envelope: Envelope, payload: Payload, reason: str) -> Sequence[Envelope]:
        return []


def worker_for(services: Services, settings: Settings, handler: Holds, **options: Any) -> StageWorker:
    return StageWorker(
        handler,
        bus=services.bus,
        metrics=services.metrics,
        durable_prefix=settings.consumer_prefix,
        **{"ack_wait_s": 10, "fetch_timeout_s": 0.2, **options},
    )


async def test_a_message_over_its_share_waits_here_without_being_redelivered(settings: Settings) -> None:
    # Each redelivery counts against a message's attempts wherever it is next delivered (another process,
    # or this one after a restart): a deferred message must not be handed back to JetStream to wait.
    async with Services(settings, name="test") as services:
        handler = Holds(lambda run_id: run_id == "HOLD")
        worker = worker_for(services, settings, handler, concurrency=2, per_user=1)  # alice's one slot is HOLD's
        task = asyncio.create_task(worker.run())
        try:
            await services.bus.publish(requested("HOLD"))
            await services.bus.publish(requested("LATER"))
            await wait_for(lambda: worker.stats.deferred >= 1, what="LATER to wait for alice's slot")
            handler.release.set()
            await wait_for(lambda: handler.handled == ["HOLD", "LATER"], what="both handled, in turn")
            info = await services.bus.js.consumer_info(settings.stream_name, worker.durable)
            assert info.delivered.consumer_seq == 2  # two messages, each delivered once
        finally:
            worker.stop()
            await task


async def test_a_user_seen_lately_but_idle_does_not_halve_the_share_of_one_at_work(settings: Settings) -> None:
    # Alice's run has just finished; Bob's six runs arrive. Alice keeps one slot free for her next message,
    # not half the slots: Bob gets his whole share (6 of 8). Counting Alice as active, he got 4.
    async with Services(settings, name="test") as services:
        handler = Holds(lambda run_id: run_id != "ALICE1")
        worker = worker_for(services, settings, handler, concurrency=8)  # at most 6 for one user
        task = asyncio.create_task(worker.run())
        try:
            await services.bus.publish(requested("ALICE1", user="alice"))
            await wait_for(lambda: handler.handled == ["ALICE1"], what="alice's run handled")
            for i in range(7):
                await services.bus.publish(requested(f"BOB{i}", user="bob"))
            await wait_for(lambda: len(handler.inside) == 6, what="six of bob's runs at work at once")
            # The seventh waits: bob's share is 6, not 8.
            await wait_for(lambda: worker.stats.deferred >= 1, what="bob's seventh run to wait")
            assert len(handler.inside) == 6
            handler.release.set()
            await wait_for(lambda: len(handler.handled) == 8, what="every run handled")
        finally:
            handler.release.set()
            worker.stop()
            await task


async def test_an_idle_stage_takes_a_message_as_it_arrives(settings: Settings) -> None:
    # An idle stage long-polls; a message arriving then is handed over at once, not when the poll expires or
    # its batch is full, even while more keep trickling in (replies coming back one by one).
    async with Services(settings, name="test") as services:
        handler = Holds(lambda run_id: run_id != "FIRST")
        worker = worker_for(services, settings, handler, concurrency=128, ack_wait_s=30, fetch_timeout_s=3.0)
        task = asyncio.create_task(worker.run())
        try:

            async def polling() -> bool:
                if not await services.bus.consumer_exists(worker.durable):
                    return False  # the worker has not subscribed yet
                info = await services.bus.js.consumer_info(settings.stream_name, worker.durable)
                return bool(info.num_waiting)

            await wait_for(polling, what="the idle stage's long poll")
            loop = asyncio.get_running_loop()
            started = loop.time()
            await services.bus.publish(requested("FIRST"))
            trickle = 0
            while handler.handled != ["FIRST"] and loop.time() - started < 4:
                trickle += 1  # more arrive while the first waits to be handled
                await services.bus.publish(requested(f"NEXT{trickle}"))
                await asyncio.sleep(0.1)
            assert handler.handled == ["FIRST"]
            assert loop.time() - started < 1.5  # not the 3 s fetch timeout
        finally:
            handler.release.set()
            worker.stop()
            await task
