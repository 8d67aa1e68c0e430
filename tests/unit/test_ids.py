"""The cheap ULIDs (echelon_platform/domain/ids.py) are ULIDs: python-ulid reads them back to the same text
and time, they sort in the order they were made, and they are unique."""

from __future__ import annotations

import time

from ulid import ULID

from echelon_platform.domain.ids import UlidSource


def test_ids_are_ulids_of_now_in_the_order_they_were_made() -> None:
    source = UlidSource()
    before = time.time()
    ids = [source() for _ in range(20_000)]
    after = time.time()
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    for text in ids[:: len(ids) // 50]:
        parsed = ULID.from_str(text)
        assert str(parsed) == text and len(text) == 26
        assert before - 0.002 <= parsed.timestamp <= after + 0.002


def test_within_a_millisecond_ids_count_up_and_a_clock_that_steps_back_keeps_the_order() -> None:
    now = [1_733_500_000_000 * 1_000_000]
    source = UlidSource(lambda: now[0])
    first, second = source(), source()
    assert int(ULID.from_str(second)) == int(ULID.from_str(first)) + 1
    now[0] -= 5_000 * 1_000_000  # NTP steps the clock back 5 s
    third = source()
    assert third > second and ULID.from_str(third).milliseconds == ULID.from_str(first).milliseconds


def test_the_encoding_agrees_with_python_ulid_bit_for_bit() -> None:
    for ms in (0, 1, 1_733_500_000_123, 2**48 - 1):
        source = UlidSource(lambda ms=ms: ms * 1_000_000)  # type: ignore[misc]
        made = source()
        value = int(ULID.from_str(made))
        assert value >> 80 == ms
        assert made == str(ULID.from_int(value))
