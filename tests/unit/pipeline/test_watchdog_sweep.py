"""The watchdog's sweep on the in-memory ports: which runs it fails, with what, and when it holds back."""

from __future__ import annotations

from datetime import timedelta

from echelon_platform.adapters.memory import MemoryBacklog, MemoryLog, MemoryPublisher, MemoryRunStates
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope, utcnow
from echelon_platform.domain.events import RunFailed, Subjects, make_event, payload_as
from pipeline_workers.watchdog import Watchdog
from tests.factories import requested, run_events

SETTINGS = Settings()
SUBJECTS = Subjects(SETTINGS.subject_root, SETTINGS.partitioning)


class World:
    def __init__(self) -> None:
        self.log = MemoryLog()
        self.bus = MemoryPublisher(SUBJECTS)
        self.backlog = MemoryBacklog()
        self.watchdog = Watchdog(
            log_queries=self.log,
            runs=MemoryRunStates(),
            publisher=self.bus,
            backlog=self.backlog,
            subjects=SUBJECTS,
            writer_durables=["writer"],
            timeout_s=60,
            interval_s=1,
            writer_behind_s=10,
        )

    async def logged(self, events: list[Envelope], *, minutes_ago: float) -> None:
        self.log.clock = lambda: utcnow() - timedelta(minutes=minutes_ago)
        await self.log.append_batch([(e, i) for i, e in enumerate(events, start=await self.log.max_seq() + 1)])
        self.log.clock = utcnow


async def test_fails_a_stalled_run_fenced_on_its_last_position() -> None:
    world = World()
    await world.logged(run_events("STALLED", n=1), minutes_ago=5)
    await world.logged([requested("BUSY")], minutes_ago=0)
    await world.logged(
        [requested("ENDED"), make_event(RunFailed(run_id="ENDED", reason="x", stage="ingest"))], minutes_ago=5
    )
    assert await world.watchdog.sweep() == ["STALLED"]
    [failed] = [payload_as(e, RunFailed) for e in world.bus.published]
    assert failed.run_id == "STALLED" and failed.stage == "watchdog"
    assert failed.as_of_seq == len(run_events("STALLED", n=1))
    assert "no progress for 60s" in failed.reason


async def test_judges_nobody_while_a_writer_is_behind() -> None:
    world = World()
    await world.logged([requested("WAITING")], minutes_ago=5)
    world.backlog.ages["writer"] = 30.0
    assert await world.watchdog.sweep() == []
    assert world.bus.published == []
    world.backlog.ages["writer"] = 0.0
    assert await world.watchdog.sweep() == ["WAITING"]
