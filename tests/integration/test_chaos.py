"""`echelon chaos`, CI-sized: a real multi-process stack (API, two coordinators, one process per stage, own
NATS and Redis), each fault kind injected under load (two at a time, with outages, table locks and frozen
processes of up to 1.5 s), then every invariant checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from echelon.chaos import ChaosConfig, Tuning, run_chaos
from echelon.chaos.faults import KINDS
from echelon.embedded import StackUrls
from echelon_platform.config import Settings


@pytest.mark.timeout(420)
async def test_each_component_killed_once_under_load_breaks_no_invariant(infra: StackUrls, tmp_path: Path) -> None:
    # Postgres is the session's server (chaos makes its own database and only cuts its connections); NATS
    # and Redis are the chaos run's own, since it kills them.
    base = Settings(nats_url=None, redis_url=None, database_url=infra.database_url, data_dir=tmp_path)
    config = ChaosConfig(
        rounds=len(KINDS),
        seed=20260,
        runs_per_second=1.0,
        mean_gap_s=1.5,
        outage_s=(0.3, 1.5),
        overlap=2,
        drain_deadline_s=120.0,
        tuning=Tuning(run_timeout_s=90.0),
    )

    report = await run_chaos(base, config)

    assert report["violations"] == {}, report
    assert report["ok"] and report["violation_count"] == 0
    # Every kind at least once (the schedule's first pass), each round two distinct kinds at once.
    kills = {kind: c["kills"] for kind, c in report["components"].items()}
    assert set(kills) == set(KINDS) and sum(kills.values()) == 2 * len(KINDS), kills
    assert all(f["outage_s"] >= 0.3 for f in report["faults"] if f["kind"] in ("nats", "redis")), report["faults"]
    assert all(c["not_recovered"] == 0 for c in report["components"].values())
    assert report["components"]["coordinator"]["takeover"]["max_s"] < 5.0
    # The load really ran through the faults, and every accepted run ended with the clean run's numbers.
    assert report["load"]["accepted"] >= 10
    assert report["run_statuses"] == {"COMPLETED": report["runs_in_log"]}
    assert report["replay_verify"]["differences"] == 0
    assert report["timings"]["runs_open_at_drain_deadline"] == 0
