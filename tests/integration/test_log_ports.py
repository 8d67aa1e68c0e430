"""One contract for the event log's ports (recorder, readers, queries), held by every implementation: the
Postgres EventStore on this test's database and the in-memory MemoryLog the unit tests use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from echelon_platform.adapters.event_store import EventStore
from echelon_platform.adapters.memory import MemoryLog
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import JudgeCalled, RunFailed, make_event
from echelon_platform.errors import WriterFenced
from echelon_platform.ports.log import EventLog, ParkedEvent
from tests.factories import requested, run_events


@pytest.fixture
async def postgres_log(settings: Settings) -> AsyncIterator[EventStore]:
    async with EventStore(str(settings.database_url)) as store:
        yield store


@pytest.fixture(params=["memory", "postgres"])
def log(request: pytest.FixtureRequest) -> EventLog:
    if request.param == "memory":
        return MemoryLog()
    store: EventStore = request.getfixturevalue("postgres_log")
    return store


def numbered(events: list[Envelope], first: int = 1) -> list[tuple[Envelope, int]]:
    return [(e, first + i) for i, e in enumerate(events)]


def judge_call(run_id: str, n: int, tokens: int) -> Envelope:
    replay_id = f"{run_id}-0000"
    return make_event(
        JudgeCalled(
            run_id=run_id,
            replay_id=replay_id,
            call_key=f"{replay_id}:score:offline:{n}:{n:016x}",
            judge="offline",
            model="offline-lexical-v1",
            purpose="score",
            round_trip=n,
            prompt_sha256="0" * 64,
            methodology_version="v1",
            input_tokens=tokens,
            output_tokens=tokens // 2,
            cost_usd=0.25,
            raw_text="the judge's whole answer",
            usable=True,
        )
    )


class Refusing:
    lease = None

    async def check(self, conn: Any) -> None:
        raise WriterFenced("a newer writer holds the lease")


async def test_append_keeps_each_dedup_key_once_and_names_the_winners(log: EventLog) -> None:
    first = run_events("r1")
    result = await log.append_batch(numbered(first))
    assert result.inserted == len(first)
    assert sorted(result.winners.values()) == list(range(1, len(first) + 1))
    again = [e.model_copy(update={"event_id": f"{e.event_id[:-1]}Z"}) for e in first[:2]]  # same keys, new ids
    result = await log.append_batch(numbered(again, first=100))
    assert result.inserted == 0
    assert result.winners == {first[0].event_id: 1, first[1].event_id: 2}  # the stored ones win
    assert await log.count() == len(first)
    assert await log.max_seq() == len(first)
    assert await log.has_dedup_keys([first[0].dedup_key, "verify.run.requested:nobody"]) == {first[0].dedup_key}


async def test_a_fenced_append_stores_nothing(log: EventLog) -> None:
    with pytest.raises(WriterFenced):
        await log.append_batch(numbered(run_events("r1")), [ParkedEvent(7, "x.y", b"junk", "bad")], fence=Refusing())
    assert await log.count() == 0
    assert await log.parked(include_retried=True) == []


async def test_parks_poison_once_and_marks_it_retried(log: EventLog) -> None:
    await log.append_batch([], [ParkedEvent(7, "t.a", b"\x00junk", "malformed envelope")])
    await log.append_batch([], [ParkedEvent(7, "t.a", b"other", "again"), ParkedEvent(9, "t.b", b"{}", "bad")])
    parked = await log.parked()
    assert [(p.stream_seq, p.subject, p.raw, p.reason) for p in parked] == [
        (7, "t.a", b"\x00junk", "malformed envelope"),
        (9, "t.b", b"{}", "bad"),
    ]
    assert parked[0].id < parked[1].id and parked[0].retried_at is None
    await log.append_batch([], retried=[parked[0].id])
    assert [p.stream_seq for p in await log.parked()] == [9]
    everything = await log.parked(include_retried=True)
    assert everything[0].retried_at is not None
    assert len(await log.parked(include_retried=True, limit=1)) == 1


async def test_reads_one_runs_events_in_log_order(log: EventLog) -> None:
    mine, theirs = run_events("r1", n=3), run_events("r2", n=1)
    await log.append_batch(numbered([mine[0], theirs[0], *mine[1:], *theirs[1:]]))
    events = await log.run_events("r1")
    assert [e.event_id for e in events] == [e.event_id for e in mine]
    assert events[2].payload == mine[2].payload  # a replay request, its record included
    assert [e.topic for e in await log.run_events("r1", ["verify.run.requested", "verify.run.ingested"])] == [
        "verify.run.requested",
        "verify.run.ingested",
    ]
    page = await log.run_events_page("r1", limit=2)
    assert [e.event_id for _, e in page] == [e.event_id for e in mine[:2]]
    rest = await log.run_events_page("r1", after=page[-1][0], limit=100)
    assert [e.event_id for _, e in rest] == [e.event_id for e in mine[2:]]
    assert await log.run_events("nobody") == []


async def test_run_log_leaves_out_what_projections_never_read(log: EventLog) -> None:
    events = [*run_events("r1", n=1, failed=0), judge_call("r1", 1, 100)]
    await log.append_batch(numbered(events))
    read = dict((e.topic, e) for _, e in await log.run_log("r1", timeout=5))
    assert "record" not in read["verify.replay.requested"].payload
    assert read["verify.replay.requested"].payload["replay_id"] == "r1-0000"
    assert "raw_text" not in read["verify.judge.called"].payload
    assert read["verify.run.requested"].run_id == "r1"


async def test_streams_the_whole_log_or_one_partition(log: EventLog) -> None:
    a, b = run_events("r1", n=1), run_events("r2", n=1)
    await log.append_batch(numbered(a), partition=0)
    await log.append_batch(numbered(b, first=50), partition=1)
    everything = [(seq, e.event_id) async for seq, e in log.stream()]
    assert [i for _, i in everything] == [e.event_id for e in [*a, *b]]
    second = [e.event_id async for _, e in log.stream(partition=1)]
    assert second == [e.event_id for e in b]
    after = everything[1][0]
    assert [e.event_id async for _, e in log.stream(after_seq=after, partition=0)] == [e.event_id for e in a[2:]]


async def test_stream_rows_reads_each_partition_after_its_own_position(log: EventLog) -> None:
    a, b = run_events("r1", n=2, failed=0), run_events("r2", n=1)
    await log.append_batch(numbered(a), partition=0)
    await log.append_batch(numbered(b, first=50), partition=1)
    rows = [row async for batch in log.stream_rows(batch=3) for row in batch]
    assert [r[1] for r in rows] == [e.event_id for e in [*a, *b]]
    assert {r[6] for r in rows} == {0, 1}
    last_of_a = max(r[0] for r in rows if r[6] == 0)
    only_b = [r[1] async for batch in log.stream_rows(positions={0: last_of_a, 1: 0}) for r in batch]
    assert only_b == [e.event_id for e in b]
    assert [r async for batch in log.stream_rows(positions={0: 0}) for r in batch if r[6] == 1] == []


async def test_stream_rows_with_payload_topics_reads_only_those_payloads(log: EventLog) -> None:
    await log.append_batch(numbered(run_events("r1", n=1, failed=0)))
    rows = [r async for batch in log.stream_rows(payload_topics=["verify.replay.requested"]) for r in batch]
    payloads = {r[3]: r[5] for r in rows}
    assert payloads["verify.run.requested"] is None
    assert payloads["verify.replay.requested"] is not None
    assert (
        '"replay_id"' in payloads["verify.replay.requested"] and '"record"' not in payloads["verify.replay.requested"]
    )


async def test_stalled_runs_are_those_still_going(log: EventLog) -> None:
    going, failed = run_events("r1", n=1), [requested("r2")]
    failed.append(make_event(RunFailed(run_id="r2", reason="gave up", stage="ingest")))
    await log.append_batch(numbered([*going, *failed]))
    stalled = await log.stalled_runs(-60.0)  # every run is older than a minute from now
    assert [(s.run_id, s.last_seq) for s in stalled] == [("r1", len(going))]
    assert await log.stalled_runs(3600.0) == []


async def test_last_positions_and_judge_usage_per_run(log: EventLog) -> None:
    events = [*run_events("r1", n=1), judge_call("r1", 1, 100), judge_call("r1", 2, 300), requested("r2")]
    await log.append_batch(numbered(events))
    assert await log.last_positions(["r1", "r2", "nobody"]) == {"r1": len(events) - 1, "r2": len(events)}
    assert await log.last_positions([]) == {}
    usage = await log.judge_usage(["r1", "r2"])
    assert list(usage) == ["r1"]
    assert (usage["r1"].calls, usage["r1"].input_tokens, usage["r1"].output_tokens) == (2, 400, 200)
    assert usage["r1"].cost_usd == pytest.approx(0.5)
    await log.ping()


async def test_a_pool_connection_goes_back_without_a_reset_query(postgres_log: EventStore) -> None:
    """asyncpg resets a connection on every release with one more query (`RESET ALL`, `UNLISTEN *`, ...);
    the store's sessions hold nothing to reset, so the last query each pool connection ran is the store's own."""
    await postgres_log.append_batch(numbered([requested("R1")]))
    assert await postgres_log.has_dedup_keys(["nothing-here"]) == set()
    assert await postgres_log.run_events("R1")
    pool = postgres_log.pool
    backends = [c._con.get_server_pid() for c in pool._holders if c._con is not None]
    assert backends
    async with pool.acquire() as conn:
        me = conn.get_server_pid()
    async with EventStore(postgres_log.database_url, max_size=1) as other, other.pool.acquire() as conn:
        rows = await conn.fetch("SELECT pid, query FROM pg_stat_activity WHERE pid = ANY($1::int[])", backends)
    last = {r["pid"]: r["query"] for r in rows}
    assert last and all("RESET ALL" not in q and "UNLISTEN" not in q for q in last.values()), last
    assert me in last
