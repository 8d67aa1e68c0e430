"""The many-host model of partitioned writers, calculated from what bench_drain.py measured here.

    python scripts/bench_drain.py --partitions 1 2 4 > drain.jsonl
    python scripts/model_scaleout.py drain.jsonl [--pg-cores 8] [--partitions 1 2 4 8 16 32 64]

bench_drain.py reports, for each P, the CPU each component spent per drained event (writers without their
start-up, NATS, Postgres with every backend, Redis). On many hosts each partition's writer has a core of its
own, so the writers scale with P, and the shared servers set the ceilings:

  writers   P x 1e6 / writer_us           one Python process per partition, one core each
  postgres  pg_cores x 1e6 / postgres_us  a backend per writer; appends of different partitions share no
                                          lock (each takes only its own lease row)
  redis     1e6 / redis_us                one thread executes every command
  nats      S x 1e6 / nats_us             S streams (today one: its leader stores every event in order on
                                          one core); a stream per partition (`--nats-streams P`) would lift
                                          it, each partition's subjects being a stream of their own

Throughput(P) = the least of the four; the binding one is named. The costs come from the P = 1 run (the
least contended on a 2-core machine, where every process shares the same cores); the P > 1 runs of this
machine are printed beside them to show that contention. Assumptions it cannot check here: CPU per event
stays flat as servers get more cores (no lock or WAL contention in Postgres at that rate), and the network
adds latency but no CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

COMPONENTS = ("writers", "postgres", "redis", "nats")


def load(path: Path) -> dict[int, dict[str, Any]]:
    """The process-mode `ours` records of a bench_drain.py run, by partition count."""
    runs: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("measure") == "ours" and "cpu_us_per_event" in record:
            runs[int(record["partitions"])] = record
    return runs


def ceilings(costs: dict[str, float], partitions: int, pg_cores: int, streams: int) -> dict[str, float]:
    return {
        "writers": partitions * 1e6 / costs["writers"],
        "postgres": pg_cores * 1e6 / costs["postgres"],
        "redis": 1e6 / costs["redis"],
        "nats": min(streams, partitions) * 1e6 / costs["nats"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("measured", type=Path, help="bench_drain.py output (JSON lines)")
    parser.add_argument("--pg-cores", type=int, default=8, help="cores of the Postgres primary")
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument(
        "--nats-streams", type=int, default=1, help="JetStream streams the log is spread over (P: one each)"
    )
    args = parser.parse_args()
    runs = load(args.measured)
    if 1 not in runs:
        sys.exit("model_scaleout: the measurements hold no P = 1 run (bench_drain.py --partitions 1 ...)")
    base = runs[1]
    costs = {k: float(base["cpu_us_per_event"][k]) for k in COMPONENTS}
    print(json.dumps({"measure": "costs_us_per_event", "from_partitions": 1, **costs}))
    for p, run in sorted(runs.items()):
        print(json.dumps({"measure": "this_machine", "partitions": p, "events_per_s": run["events_per_s"]}))
    for p in args.partitions:
        limits = ceilings(costs, p, args.pg_cores, args.nats_streams)
        binding = min(limits, key=limits.__getitem__)
        print(
            json.dumps(
                {
                    "measure": "many_hosts",
                    "partitions": p,
                    "writer_hosts": p,
                    "events_per_s": round(limits[binding]),
                    "bound_by": binding,
                    **{f"{k}_ceiling": round(v) for k, v in limits.items()},
                }
            )
        )


if __name__ == "__main__":
    main()
