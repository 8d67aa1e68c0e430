"""The one backoff policy: equal jitter under a cap, for every attempt count a long outage can reach."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given
from hypothesis import strategies as st

from echelon_platform.retry import Backoff, backoff_delay


@given(attempt=st.integers(min_value=1, max_value=100_000), base=st.floats(0.01, 2.0), cap=st.floats(0.5, 60.0))
def test_each_wait_lies_between_half_and_all_of_its_ceiling(attempt: int, base: float, cap: float) -> None:
    ceiling = min(cap, base * 2 ** (min(attempt, 64) - 1))
    delay = backoff_delay(attempt, base, cap, random.Random(attempt))
    assert ceiling / 2 <= delay <= ceiling


def test_a_message_put_back_thousands_of_times_still_waits_the_cap() -> None:
    # Stage workers count a message's waits without bound; 2**2000 does not fit a float.
    assert 15.0 <= backoff_delay(2000, 0.25, 30.0) <= 30.0


async def test_a_reconnect_loop_keeps_backing_off_after_a_long_outage() -> None:
    # About 85 minutes of failed reconnects at the 5 s cap: the next wait is still a wait, not an error.
    backoff = Backoff()
    backoff.attempt = 1100
    stop = asyncio.Event()
    stop.set()  # returns at once; the delay is computed all the same
    await backoff.wait(stop)
    assert backoff.attempt == 1101
