"""The bootstrap is computed fast, and exactly as before: a known certificate's uncertainty is pinned, and the
fast path's unrounded resampled figures equal a plain per-resample recomputation, bit for bit."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime

import orjson
import pytest

from echelon_platform.domain.certificate import build_certificate, composite_with
from echelon_platform.domain.intervals import (
    _columns,
    bootstrap_samples,
    bootstrap_seed,
    figures_of,
    prepare,
    resample_indices,
)
from echelon_platform.domain.values import ReplayScore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def scores(n: int, seed: int, *, weird: bool = False) -> list[ReplayScore]:
    """Replays like a judge produces them: 1-8 claims, some without confidences, confidences in every bin."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        claims = rng.randint(1, 8)
        supported = rng.randint(0, claims)
        judged = not weird or rng.random() < 0.6
        # weird: one edge value per replay; all-unsupported claims at 1e-80 need an fsum'd squared error
        edge = rng.choice([0.0, 1.0, 0.1, 0.999, 1e-80]) if weird else 0.0
        confidences = [edge if weird else round(rng.random(), 3) for _ in range(claims)]
        out.append(
            ReplayScore(
                replay_id=f"r{i:05d}",
                ground_truth_id=f"pr-{i}",
                precision=supported / claims,
                recall=rng.randint(0, 3) / 3,
                reply_accuracy=rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]),
                claims_total=claims,
                claims_supported=supported,
                changes_total=3,
                changes_surfaced=1,
                scoring_model="offline-lexical-v1",
                scoring_latency_ms=1.0,
                scored_at=T0,
                claim_supported=[True] * supported + [False] * (claims - supported) if judged else None,
                claim_confidences=confidences if judged else None,
            )
        )
    return out


def test_a_known_certificates_uncertainty_is_unchanged() -> None:
    cert = build_certificate(
        run_id="01JPINNEDUNCERTAINTY00000",
        construct_id="pinned",
        scores=scores(300, 7),
        failed=[],
        weights={"precision": 2.0, "recall": 1.0, "reply_accuracy": 0.5},
        min_replays=1,
        ground_truth_source="github",
        commit_range="a..b",
        methodology_version="v1",
        timestamp=T0,
    )
    assert cert.uncertainty is not None
    document = orjson.dumps(cert.uncertainty.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    assert hashlib.sha256(document).hexdigest() == PINNED, document.decode()


PINNED = "d8cee4e1db02fb5f60260a468bbe3f9942280bc3c9f60b9463c8761d90999534"


def slow_samples(data: list[ReplayScore], run_id: str) -> dict[str, list[float]]:
    """The bootstrap as first written: every resample rebuilt as a list of replays and refigured."""
    ordered = [prepare(s) for s in sorted(data, key=lambda s: s.replay_id)]
    composite = composite_with({"precision": 1.0, "recall": 3.0, "reply_accuracy": 0.25})
    samples: dict[str, list[float]] = {}
    for draw in resample_indices(bootstrap_seed(run_id), len(ordered)):
        for key, value in figures_of([ordered[i] for i in draw], composite).items():
            samples.setdefault(key, []).append(value)
    return samples


@pytest.mark.parametrize(("n", "seed", "weird"), [(1, 1, False), (7, 2, True), (40, 3, False), (150, 4, True)])
def test_the_fast_bootstrap_draws_the_same_figures_bit_for_bit(n: int, seed: int, weird: bool) -> None:
    data = scores(n, seed, weird=weird)
    ordered = [prepare(s) for s in sorted(data, key=lambda s: s.replay_id)]
    composite = composite_with({"precision": 1.0, "recall": 3.0, "reply_accuracy": 0.25})
    fast = bootstrap_samples(ordered, composite, bootstrap_seed(f"run-{seed}"))
    assert not weird or n < 40 or "squared_error" in _columns(ordered).loose  # the fsum path is exercised
    slow = slow_samples(data, f"run-{seed}")
    assert fast.keys() == slow.keys()
    for key in slow:
        assert [v.hex() for v in fast[key]] == [v.hex() for v in slow[key]], key


def test_with_repeats_the_unit_resampled_is_the_change() -> None:
    # 3 changes × 3 repeats; a change's repeats agree (precision 0, ½, 1). Resampling changes, about 1 in 27
    # resamples draws change A three times: the 2.5th percentile of precision is then exactly 0. Resampling
    # the 9 replays independently, all 9 from A is (1/3)^9: the interval would start well above 0.
    from tests.unit.pipeline.test_certify import build, score

    scores = [
        score(f"r{change}-{repeat}", supported=change, claims=2).model_copy(
            update={"ground_truth_id": f"pr-{change}", "repeat": repeat}
        )
        for change in range(3)
        for repeat in range(3)
    ]
    cert = build(scores, run_id="01JREPEATSUNIT00000000000")
    u = cert.uncertainty
    assert u is not None and "over changes" in u.method
    assert (u.precision.low, u.precision.high) == (0.0, 1.0)
    single = build([s.model_copy(update={"ground_truth_id": s.replay_id}) for s in scores], run_id=cert.run_id)
    assert single.uncertainty is not None and single.uncertainty.precision.low > 0.1  # replays as units
