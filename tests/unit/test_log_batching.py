"""Long-running roles write the log lines of one event-loop turn in one write (log_config.TickBatchedStream)."""

from __future__ import annotations

import asyncio
import io

import structlog

from echelon_platform.log_config import TickBatchedStream, configure_logging


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_one_turns_lines_are_one_write_after_the_turn() -> None:
    out = CountingStream()
    configure_logging("INFO", stream=out, cache=False, batched=True)  # type: ignore[arg-type]
    log = structlog.get_logger("t")
    for i in range(5):
        log.info("line", i=i)
    assert out.getvalue() == ""  # nothing written inside the turn
    await asyncio.sleep(0)  # the turn ends
    lines = out.getvalue().splitlines()
    assert [line.count('"line"') for line in lines] == [1] * 5
    assert out.writes == 1


def test_outside_a_loop_each_line_is_written_at_once() -> None:
    out = CountingStream()
    batched = TickBatchedStream(out)
    batched.write("a\n")
    batched.flush()
    assert out.getvalue() == "a\n"


async def test_many_waiting_lines_are_written_without_waiting_for_the_turn() -> None:
    out = CountingStream()
    batched = TickBatchedStream(out)
    for _ in range(TickBatchedStream.MAX_WAITING):
        batched.write("x\n")
        batched.flush()
    assert out.getvalue().count("x") == TickBatchedStream.MAX_WAITING


def test_drain_writes_what_waits_at_exit() -> None:
    out = CountingStream()
    batched = TickBatchedStream(out)
    batched.write("last words\n")  # no flush: the process is exiting (atexit calls drain)
    batched.drain()
    assert out.getvalue() == "last words\n"
