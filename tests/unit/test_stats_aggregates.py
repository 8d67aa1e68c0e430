"""The leaderboard's agreement from sums (what the read models keep as pairs come and go) equals
`agreement()` over the pairs themselves, ties included; group deltas cancel out exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from echelon_platform.domain.agreement import agreement
from echelon_platform.domain.stats import ERROR_SCALE, agreement_of, deltas, pair_terms

# Few distinct composites, so ties are common.
pairs_strategy = st.lists(
    st.tuples(st.integers(1, 5), st.sampled_from([0.0, 0.125, 1 / 3, 0.5, 0.7, 1.0])), min_size=0, max_size=40
)


def sums_of(pairs: list[tuple[int, float]]) -> dict[str, int]:
    """The sums by their definition (the Lua script keeps them incrementally)."""
    sums = {"N": len(pairs), "close": 0, "err": 0, "ties": 0}
    for v in range(1, 6):
        mine = [c for h, c in pairs if h == v]
        sums[f"n{v}"] = len(mine)
        sums[f"P{v}"] = sum(sum(1 for _, d in pairs if d < c) for c in mine)
        sums[f"Q{v}"] = sum(sum(1 for _, d in pairs if d == c) for c in mine)
    for c in {c for _, c in pairs}:
        t = sum(1 for _, d in pairs if d == c)
        sums["ties"] += t**3 - t
    for h, c in pairs:
        close, error = pair_terms((h, c, "m", "v", "r", "u"))
        sums["close"] += close
        sums["err"] += error
    return sums


@given(pairs_strategy)
def test_agreement_from_sums_equals_agreement_over_pairs(pairs: list[tuple[int, float]]) -> None:
    got, mae = agreement_of(sums_of(pairs))
    assert got == agreement(pairs)
    if pairs:
        expected = sum(abs((h - 1) / 4 - c) for h, c in pairs) / len(pairs)
        assert mae is not None and abs(mae - expected) <= 1e-6 + len(pairs) / ERROR_SCALE
    else:
        assert mae is None


def test_a_record_replaced_by_itself_moves_nothing_and_a_move_is_exact() -> None:
    record = {
        "scopes": ["all", "public"],
        "construct_id": "oracle-a",
        "scoring_model": "judge-x",
        "counts": [1, 1, 1, 0, 1, 700_000_000, 1_500_000, 1, 10, 5, 3],
        "brier": 0.1,
        "pairs": [],
    }
    assert deltas(record, record) == {}
    moved = deltas(record, {**record, "construct_id": "oracle-b"})
    assert moved[("all", "construct_id", "oracle-a")] == [-x for x in record["counts"]]
    assert moved[("public", "construct_id", "oracle-b")] == record["counts"]
    assert ("all", "scoring_model", "judge-x") not in moved
