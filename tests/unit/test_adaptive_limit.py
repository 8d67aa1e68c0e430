"""The adaptive limit's policy in one process (no Redis): ceiling, halving on overload, growth in use."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from echelon_platform.adapters.adaptive_limit import AdaptiveLimiter, Slot, pause_from_headers
from pipeline_workers.scoring.judge_limit import classify_judge_failure
from pipeline_workers.scoring.messages_api import ApiAnswer, JudgeStatusError, JudgeUnreachable
from tests.helpers import HeldCalls, wait_for


async def test_never_more_in_flight_than_the_ceiling() -> None:
    limiter = AdaptiveLimiter("judge", cap=3)
    calls = HeldCalls()
    tasks = [asyncio.create_task(calls.call(limiter)) for _ in range(10)]
    await wait_for(lambda: calls.in_flight == 3, what="three calls in flight")
    for _ in range(20):  # give the others every chance to start too
        await asyncio.sleep(0)
    assert calls.in_flight == 3  # the other seven wait
    calls.release.set()
    await asyncio.gather(*tasks)
    assert calls.peak == 3


async def test_an_overload_halves_what_was_in_flight_and_successes_in_use_grow_it() -> None:
    limiter = AdaptiveLimiter("judge", cap=64, initial=8)
    gate = asyncio.Event()

    async def busy() -> None:
        async with limiter.slot():
            await gate.wait()

    holders = [asyncio.create_task(busy()) for _ in range(3)]

    async def three_in_flight() -> bool:
        return (await limiter.shared_state())[1] == 3

    await wait_for(three_in_flight, what="three calls in flight")
    with pytest.raises(RuntimeError):
        async with limiter.slot() as slot:
            slot.overloaded(None)
            raise RuntimeError("429")
    assert limiter.limit == 2.0  # 4 were in flight when the provider refused: half of that
    gate.set()
    await asyncio.gather(*holders)
    # Successes while at least half the limit was in flight add 1/limit each (3 and 2 in flight); the last
    # one, alone, does not: the limit was not what held it back.
    assert limiter.limit == pytest.approx(2.0 + 1 / 2.0 + 1 / 2.5)


async def test_a_call_alone_far_below_the_limit_does_not_grow_it() -> None:
    limiter = AdaptiveLimiter("judge", cap=64, initial=16)
    for _ in range(5):
        async with limiter.slot():
            pass
    assert limiter.limit == 16.0


def test_an_exhausted_rate_limit_pauses_until_its_reset() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    reset = (now + timedelta(seconds=7)).isoformat().replace("+00:00", "Z")
    headers = {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset}
    assert pause_from_headers(headers, now) == 7.0
    headers["anthropic-ratelimit-requests-remaining"] = "12"
    assert pause_from_headers(headers, now) == 0.0


@pytest.mark.parametrize(("status", "kind"), [(429, "overload"), (529, "overload"), (400, "error")])
def test_judge_failures_that_mean_too_many(status: int, kind: str) -> None:
    body = b'{"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}'
    headers = {"retry-after": "4", "anthropic-ratelimit-requests-limit": "1000"}
    error = JudgeStatusError(ApiAnswer(status, headers, body))
    slot = Slot()
    classify_judge_failure(error, slot)
    assert slot.kind == kind
    assert slot.pause_s == (4.0 if kind == "overload" else 0.0)
    assert slot.rate_per_s == pytest.approx(1000 / 60)
    assert slot.rate_limited is (status == 429)  # only a 429 is a refusal for the rate


def test_a_judge_that_times_out_reads_as_overloaded_and_one_unreachable_as_failed() -> None:
    slot = Slot()
    classify_judge_failure(JudgeUnreachable("APITimeoutError", timed_out=True), slot)
    assert slot.kind == "overload"
    slot = Slot()
    classify_judge_failure(JudgeUnreachable("APIConnectionError: ClientConnectorError", timed_out=False), slot)
    assert slot.kind == "error"


async def _refused_with(limiter: AdaptiveLimiter, held: int, headers: dict[str, str], *, for_rate: bool) -> float:
    """The limit right after a 429 carrying `headers`, with `held` other calls in flight and a baseline
    latency of >= 0.2 s (read before those calls end: their successes would grow it again)."""
    async with limiter.slot():
        await asyncio.sleep(0.2)  # an answered call: the endpoint's baseline latency
    calls = HeldCalls()
    holders = [asyncio.create_task(calls.call(limiter)) for _ in range(held)]
    await wait_for(lambda: calls.in_flight == held, what=f"{held} calls in flight")
    with pytest.raises(RuntimeError):
        async with limiter.slot() as slot:
            slot.headers(headers)
            slot.overloaded(0.01, rate_limited=for_rate)
            raise RuntimeError("429" if for_rate else "529")
    after = limiter.limit
    calls.release.set()
    await asyncio.gather(*holders)
    return after


@pytest.mark.parametrize(
    ("requests_per_minute", "for_rate", "limit"),
    [
        (12_000, True, 40.0),  # 200/s x >= 0.2 s keeps >= 40 busy: not cut below that (nor raised above it)
        (60, True, 20.0),  # 1/s x 0.2 s: under one call busy, so the 40 in flight are halved as on any overload
        (None, True, 20.0),  # no stated rate: halved
        (12_000, False, 20.0),  # overloaded (529), not refused for the rate: halved whatever the rate
    ],
)
async def test_a_refusal_for_the_rate_does_not_cut_below_what_the_stated_rate_keeps_busy(
    requests_per_minute: int | None, for_rate: bool, limit: float
) -> None:
    limiter = AdaptiveLimiter("judge", cap=64, initial=40)
    headers = {} if requests_per_minute is None else {"anthropic-ratelimit-requests-limit": str(requests_per_minute)}
    assert await _refused_with(limiter, 39, headers, for_rate=for_rate) == pytest.approx(limit)
