from __future__ import annotations

import asyncio
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from echelon_platform.config import DEFAULT_ORACLE_ALLOWLIST
from echelon_platform.domain.oracle_targets import check_callable_allowed, parse_target
from echelon_platform.domain.values import GroundTruthRecord, OracleReply
from echelon_platform.errors import OracleError, RequestRejected
from pipeline_workers.oracles import python as python_oracles
from pipeline_workers.oracles.python import OracleProcessPool, PythonOracle
from pipeline_workers.oracles.sample import summarise
from pipeline_workers.owner import current_owner
from tests.helpers import wait_for

MODULE = "echelon_test_oracles"
SYNC = "tests.unit.pipeline.oracle_targets"


@pytest.fixture(autouse=True)
def oracle_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A real importable module of oracle callables, registered for the duration of a test."""
    module = types.ModuleType(MODULE)
    seen: dict[str, Any] = {}

    async def async_oracle(request: dict[str, Any]) -> OracleReply:
        await asyncio.sleep(0)
        return OracleReply(summary="async", key_claims=[], follow_up_response=request["follow_up_question"])

    async def slow_async(request: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    module.__dict__.update(
        async_oracle=async_oracle,
        slow_async=slow_async,
        seen=seen,
    )
    monkeypatch.setitem(__import__("sys").modules, MODULE, module)
    return module


ALLOW = [f"{MODULE}:*", f"{SYNC}:*", "pipeline_workers.oracles.sample:broken", *DEFAULT_ORACLE_ALLOWLIST]


def test_allowlist_refusal_names_the_setting() -> None:
    with pytest.raises(RequestRejected) as info:
        PythonOracle("os", "system", DEFAULT_ORACLE_ALLOWLIST)
    assert "os:system is not on the allowlist" in str(info.value)
    assert "ECHELON_ORACLE_ALLOWLIST" in str(info.value)


def test_allowlist_check_is_pure_and_supports_module_wildcards() -> None:
    check_callable_allowed("pipeline_workers.oracles.sample:summarise", DEFAULT_ORACLE_ALLOWLIST)
    check_callable_allowed(f"{MODULE}:anything", [f"{MODULE}:*"])
    with pytest.raises(RequestRejected):
        check_callable_allowed("pipeline_workers.oracles.sample:broken", DEFAULT_ORACLE_ALLOWLIST)
    with pytest.raises(RequestRejected, match="must look like"):
        parse_target("not a target")
    assert parse_target(" pkg.mod:fn ") == ("pkg.mod", "fn")


async def test_sync_callable_runs_in_a_child_process(record: GroundTruthRecord) -> None:
    reply = await PythonOracle(SYNC, "sync_oracle", ALLOW).invoke(record, "What changed?")
    assert reply.summary == f"About {record.title}"
    assert reply.metadata is not None
    assert reply.metadata["pid"] != os.getpid()
    request = reply.metadata["request"]
    assert request["follow_up_question"] == "What changed?"
    assert set(request["pr"]) == {"id", "title", "description", "diff_content", "files_changed"}


async def test_pool_reuses_a_warm_process_and_replaces_one_that_hung(record: GroundTruthRecord) -> None:
    async with OracleProcessPool(max_idle=2) as pool:
        oracle = PythonOracle(SYNC, "sync_oracle", ALLOW, pool=pool)
        first = await oracle.invoke(record, "q?")
        second = await oracle.invoke(record, "q?")
        assert first.metadata and second.metadata and first.metadata["pid"] == second.metadata["pid"]
        assert pool.spawned == 1

        with pytest.raises(OracleError, match=r"timed out after 0\.2s"):
            await PythonOracle(SYNC, "hang", ALLOW, timeout_s=0.2, pool=pool).invoke(record, "q?")
        # The hung process took the warm one and was killed; the next call gets a healthy process.
        third = await oracle.invoke(record, "q?")
        assert third.summary == f"About {record.title}"
        assert pool.spawned == 2
        hung_pid = first.metadata["pid"]
        with pytest.raises(ProcessLookupError):
            os.kill(hung_pid, 0)


async def test_async_callable_is_awaited(record: GroundTruthRecord) -> None:
    reply = await PythonOracle.from_target(f"{MODULE}:async_oracle", ALLOW).invoke(record, "Why?")
    assert reply == OracleReply(summary="async", key_claims=[], follow_up_response="Why?")


@pytest.mark.parametrize(("module", "name"), [(SYNC, "slow_sync"), (MODULE, "slow_async")])
async def test_timeouts(module: str, name: str, record: GroundTruthRecord) -> None:
    async with OracleProcessPool() as pool:
        await PythonOracle(SYNC, "sync_oracle", ALLOW, pool=pool).invoke(record, "warm up")
        started = time.perf_counter()
        with pytest.raises(OracleError, match=f"oracle {module}:{name} timed out after 0.05s"):
            await PythonOracle(module, name, ALLOW, timeout_s=0.05, pool=pool).invoke(record, "q?")
        assert time.perf_counter() - started < 0.29


async def test_failures_become_oracle_errors(record: GroundTruthRecord) -> None:
    with pytest.raises(OracleError, match="raised RuntimeError: the 'broken' sample oracle always fails"):
        await PythonOracle("pipeline_workers.oracles.sample", "broken", ALLOW).invoke(record, "q?")
    with pytest.raises(OracleError, match="must be a JSON object, got array"):
        await PythonOracle(SYNC, "returns_garbage", ALLOW).invoke(record, "q?")
    with pytest.raises(OracleError, match="returned a value that is not JSON"):
        await PythonOracle(SYNC, "returns_unserialisable", ALLOW).invoke(record, "q?")
    with pytest.raises(OracleError, match="process exited with code 3"):
        await PythonOracle(SYNC, "exits", ALLOW).invoke(record, "q?")
    with pytest.raises(OracleError, match="is not a callable"):
        await PythonOracle(SYNC, "not_callable", ALLOW).invoke(record, "q?")
    with pytest.raises(OracleError, match="cannot import oracle module 'no_such_pkg'"):
        await PythonOracle("no_such_pkg", "fn", ["no_such_pkg:fn"]).invoke(record, "q?")


async def test_bundled_sample_oracle_through_the_allowlist(record: GroundTruthRecord) -> None:
    oracle = PythonOracle.from_target(DEFAULT_ORACLE_ALLOWLIST[0], DEFAULT_ORACLE_ALLOWLIST)
    reply = await oracle.invoke(record, "What does truncate return?")
    assert "Adds function truncate in textkit/text.py" in reply.key_claims


def test_sample_oracle_is_deterministic_and_reads_the_diff(record: GroundTruthRecord) -> None:
    request = {
        "pr": record.model_dump(include={"id", "title", "description", "diff_content", "files_changed"}),
        "follow_up_question": "What does truncate do when the text is short enough?",
    }
    first, second = summarise(request), summarise(request)
    assert first == second
    assert first["summary"].startswith("Add truncate() and export all helpers. Changes 2 files")
    assert first["key_claims"] == [
        "Modifies textkit/text.py",
        "Adds function truncate in textkit/text.py",
        "Modifies textkit/__init__.py",
        "Adds 9 lines and removes 2 lines",
    ]
    assert first["follow_up_response"] == (
        "In textkit/text.py, the change adds the line "
        '`def truncate(text: str, width: int, suffix: str = "...") -> str:`.'
    )
    off_topic = summarise({**request, "follow_up_question": "Is the database schema migrated?"})
    assert off_topic["follow_up_response"].startswith("The diff does not address that directly")


async def test_a_user_whose_sync_oracles_hang_leaves_processes_for_others(record: GroundTruthRecord) -> None:
    async with OracleProcessPool(max_processes=4) as pool:  # at most 3 for one user
        hang = PythonOracle(SYNC, "hang", ALLOW, timeout_s=30, pool=pool)
        token = current_owner.set("alice")
        hung = [asyncio.create_task(hang.invoke(record, "q?")) for _ in range(3)]
        await wait_for(lambda: pool.spawned == 3, what="alice's three processes")
        with pytest.raises(OracleError, match="waiting for a process"):
            await PythonOracle(SYNC, "sync_oracle", ALLOW, timeout_s=0.5, pool=pool).invoke(record, "q?")
        current_owner.reset(token)
        token = current_owner.set("bob")
        reply = await PythonOracle(SYNC, "sync_oracle", ALLOW, pool=pool).invoke(record, "q?")
        assert reply.summary == f"About {record.title}"
        current_owner.reset(token)
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)


async def test_warm_processes_start_with_the_pool(record: GroundTruthRecord) -> None:
    async with OracleProcessPool(warm=2) as pool:
        await wait_for(lambda: pool.spawned == 2, what="two warm processes")
        reply = await PythonOracle(SYNC, "sync_oracle", ALLOW, pool=pool).invoke(record, "q?")
        assert reply.summary == f"About {record.title}"
        assert pool.spawned == 2  # the call took a warm one


async def test_a_burst_of_fast_calls_is_served_by_a_few_processes(record: GroundTruthRecord) -> None:
    # Each start-up costs a Python interpreter's start; a burst waits for a process given back rather
    # than starting one per call (it used to start 24 for these 40 calls, every one competing for the CPU).
    async with OracleProcessPool(warm=2, max_processes=32) as pool:
        await wait_for(lambda: pool.spawned == 2, what="two warm processes")
        oracle = PythonOracle(SYNC, "sync_oracle", ALLOW, pool=pool)
        replies = await asyncio.gather(*(oracle.invoke(record, f"q{i}?") for i in range(40)))
        assert [r.summary for r in replies] == [f"About {record.title}"] * 40
        assert pool.spawned <= 8
        assert len({r.metadata["pid"] for r in replies if r.metadata}) <= pool.spawned


async def test_calls_that_find_every_process_busy_wait_for_one_given_back(record: GroundTruthRecord) -> None:
    # A start-up costs ~0.1 s of CPU: a call waits `start_after_s` for a busy process before starting one (it
    # used to start one as soon as it found none idle, here two more, each a Python start-up).
    async with OracleProcessPool(warm=2, max_processes=32, start_after_s=2.0) as pool:
        await wait_for(lambda: pool.spawned == 2, what="two warm processes")
        brief = PythonOracle(SYNC, "brief_sync", ALLOW, pool=pool)
        fast = PythonOracle(SYNC, "sync_oracle", ALLOW, pool=pool)
        replies = await asyncio.gather(
            *(brief.invoke(record, "q?") for _ in range(2)), *(fast.invoke(record, f"q{i}?") for i in range(10))
        )
        assert [r.summary for r in replies] == [f"About {record.title}"] * 12
        assert (pool.spawned, pool.starting) == (2, 0)


async def test_calls_waiting_longer_than_start_after_s_start_nothing_while_processes_come_back(
    record: GroundTruthRecord,
) -> None:
    # 100 calls of 20 ms on two processes: up to 48 at once (a user's share) wait in turn, ~0.5 s, but a
    # process comes back every ~10 ms.
    async with OracleProcessPool(warm=2, max_processes=64, start_after_s=0.2) as pool:
        await wait_for(lambda: pool.spawned == 2, what="two warm processes")
        brief = PythonOracle(SYNC, "brief_sync", ALLOW, pool=pool)
        replies = await asyncio.gather(*(brief.invoke(record, f"q{i}?") for i in range(100)))
        assert len(replies) == 100
        assert (pool.spawned, pool.starting) == (2, 0)


async def test_calls_arriving_faster_than_the_processes_serve_them_grow_the_pool(record: GroundTruthRecord) -> None:
    # Processes come back every ~10 ms, but up to 192 calls (a user's share) queue for two: a call waits
    # PATIENCE * start_after_s (1 s) at most, then starts one (without that limit, the pool stayed at two).
    async with OracleProcessPool(warm=2, max_processes=256, start_after_s=0.1) as pool:
        await wait_for(lambda: pool.spawned == 2, what="two warm processes")
        brief = PythonOracle(SYNC, "brief_sync", ALLOW, pool=pool)
        replies = await asyncio.gather(*(brief.invoke(record, f"q{i}?") for i in range(300)))
        assert len(replies) == 300
        assert pool.spawned + pool.starting > 2


async def test_a_process_killed_at_its_deadline_does_not_count_as_given_back(record: GroundTruthRecord) -> None:
    # Waiting calls wait on while processes come back; one killed (its call timed out) is not one of them.
    async with OracleProcessPool(warm=2, max_processes=8, start_after_s=1.0) as pool:
        await wait_for(lambda: pool.spawned == 2, what="two warm processes")
        hangs = [
            asyncio.create_task(PythonOracle(SYNC, "hang", ALLOW, timeout_s=t, pool=pool).invoke(record, "q?"))
            for t in (30, 0.3)
        ]
        await wait_for(lambda: pool.busy == 2, what="both processes in a hanging call")
        started = time.monotonic()
        waiting = asyncio.create_task(PythonOracle(SYNC, "sync_oracle", ALLOW, pool=pool).invoke(record, "q?"))
        await wait_for(lambda: pool.starting > 0 or pool.spawned > 2, what="a process started for the waiting call")
        # start_after_s after it came (1.0 s), not after the kill at 0.3 s (1.3 s)
        assert time.monotonic() - started < 1.25
        assert (await waiting).summary == f"About {record.title}"
        for task in hangs:
            task.cancel()
        await asyncio.gather(*hangs, return_exceptions=True)


async def test_a_call_still_waiting_after_start_after_s_starts_a_process(record: GroundTruthRecord) -> None:
    async with OracleProcessPool(warm=1, max_processes=4, start_after_s=0.05) as pool:
        await wait_for(lambda: pool.spawned == 1, what="a warm process")
        hung = asyncio.create_task(PythonOracle(SYNC, "hang", ALLOW, timeout_s=30, pool=pool).invoke(record, "q?"))
        await wait_for(lambda: pool.busy == 1, what="the hanging call in its process")
        reply = await PythonOracle(SYNC, "sync_oracle", ALLOW, pool=pool).invoke(record, "q?")
        assert reply.summary == f"About {record.title}"
        assert pool.spawned == 2
        hung.cancel()
        await asyncio.gather(hung, return_exceptions=True)


async def test_a_process_that_cannot_start_fails_the_call_at_once(
    record: GroundTruthRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A start-up that fails (here the interpreter exits at once) used to be retried in a busy loop until
    # the call's timeout; the call now fails with OSError, which the stage retries later.
    monkeypatch.setattr(sys, "executable", "/bin/false")
    async with OracleProcessPool() as pool:
        oracle = PythonOracle(SYNC, "sync_oracle", ALLOW, timeout_s=10, pool=pool)
        started = time.perf_counter()
        with pytest.raises(OSError, match=r"cannot start an oracle process: .*exited with code 1 as it started"):
            await oracle.invoke(record, "q?")
        assert time.perf_counter() - started < 5
        assert pool.spawned == 0


async def test_a_start_up_that_hangs_is_killed_at_its_deadline(
    record: GroundTruthRecord, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    silent = tmp_path / "silent-python"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(silent))
    monkeypatch.setattr(python_oracles, "START_TIMEOUT_S", 0.3)
    pool = OracleProcessPool()
    async with pool:
        with pytest.raises(OSError, match=r"did not start within 0\.3s"):
            await PythonOracle(SYNC, "sync_oracle", ALLOW, timeout_s=10, pool=pool).invoke(record, "q?")
    assert not pool._starting


async def test_closing_the_pool_answers_the_calls_waiting_for_a_process(record: GroundTruthRecord) -> None:
    pool = OracleProcessPool(max_processes=1)
    await pool.__aenter__()
    hang = asyncio.create_task(PythonOracle(SYNC, "hang", ALLOW, timeout_s=30, pool=pool).invoke(record, "q?"))
    await wait_for(lambda: pool.spawned == 1, what="the hanging call's process")
    waiting = asyncio.create_task(PythonOracle(SYNC, "sync_oracle", ALLOW, timeout_s=30, pool=pool).invoke(record, "q"))
    started = time.perf_counter()
    await pool.aclose()
    with pytest.raises(OSError, match="pool is closed"):
        await waiting
    with pytest.raises(OracleError, match="exited"):
        await hang
    assert time.perf_counter() - started < 5


async def test_warm_processes_beyond_the_starting_limit_are_all_started(record: GroundTruthRecord) -> None:
    async with OracleProcessPool(warm=4, max_starting=2, max_idle=8) as pool:
        await wait_for(lambda: pool.spawned == 4, what="four warm processes, two at a time")
