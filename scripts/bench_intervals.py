"""What intervals cost: building (certify), checking (`/verify`, `certificates verify`) and comparing
certificates of n replays, pure CPU, in-process; prints JSON (median of --repeat timings, milliseconds).
`--clock cpu` (the default) times this process's CPU (steady on a shared, loaded machine); `wall` the clock.

    python scripts/bench_intervals.py [--sizes 10,100,500] [--repeat 5] [--clock cpu|wall]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from echelon_platform.domain.certificate import build_certificate, composite_with, verify_certificate
from echelon_platform.domain.compare import compare
from echelon_platform.domain.intervals import bootstrap_samples, bootstrap_seed, figures_of, prepare, resample_indices
from echelon_platform.domain.values import CalibrationCertificate, ReplayScore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def scores(n: int, seed: int) -> list[ReplayScore]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        claims = rng.randint(1, 8)
        supported = rng.randint(0, claims)
        out.append(
            ReplayScore(
                replay_id=f"r{i:05d}",
                ground_truth_id=f"pr-{i}",
                precision=supported / claims,
                recall=1.0,
                reply_accuracy=rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]),
                claims_total=claims,
                claims_supported=supported,
                changes_total=1,
                changes_surfaced=1,
                scoring_model="offline-lexical-v1",
                scoring_latency_ms=1.0,
                scored_at=T0,
                claim_supported=[True] * supported + [False] * (claims - supported),
                claim_confidences=[round(rng.random(), 3) for _ in range(claims)],
            )
        )
    return out


def build(run_id: str, n: int, seed: int, *, intervals: bool) -> CalibrationCertificate:
    return build_certificate(
        run_id=run_id,
        construct_id="bench",
        scores=scores(n, seed),
        failed=[],
        weights=None,
        min_replays=1,
        ground_truth_source="github",
        commit_range="a..b",
        methodology_version="v1",
        timestamp=T0,
        intervals=intervals,
    )


def bootstrap_reference(n: int) -> dict[str, list[float]]:
    """The bootstrap as first written (each resample rebuilt as a list of replays and refigured): the
    'before' of `bootstrap_ms`, measured under the same load."""
    ordered = [prepare(s) for s in scores(n, 1)]
    composite = composite_with({"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0})
    samples: dict[str, list[float]] = {}
    for draw in resample_indices(bootstrap_seed("A"), n):
        for key, value in figures_of([ordered[i] for i in draw], composite).items():
            samples.setdefault(key, []).append(value)
    return samples


def bootstrap(n: int) -> dict[str, list[float]]:
    ordered = [prepare(s) for s in scores(n, 1)]
    equal = composite_with({"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0})
    return bootstrap_samples(ordered, equal, bootstrap_seed("A"))


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCK["cpu"]


def median_ms(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = clock()
        action()
        times.append((clock() - start) * 1000)
    return round(statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clock", choices=sorted(CLOCK), default="cpu")
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    results = []
    equal = composite_with({"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0})
    for n in (int(s) for s in args.sizes.split(",")):
        a, b = build("A", n, 1, intervals=True), build("B", n, 2, intervals=True)
        results.append(
            {
                "replays": n,
                "build_without_intervals_ms": median_ms(lambda n=n: build("A", n, 1, intervals=False), args.repeat),
                "build_with_intervals_ms": median_ms(lambda n=n: build("A", n, 1, intervals=True), args.repeat),
                "verify_ms": median_ms(lambda a=a: verify_certificate(a), args.repeat),
                "bootstrap_ms": median_ms(lambda n=n: bootstrap(n), args.repeat),
                "bootstrap_as_first_written_ms": median_ms(lambda n=n: bootstrap_reference(n), args.repeat),
                "compare_paired_ms": median_ms(
                    lambda a=a, b=b: compare(a, b, equal, equal, same_repository=True), args.repeat
                ),
            }
        )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
