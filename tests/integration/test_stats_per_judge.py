"""`/stats?group_by=scoring_model` counts per judge from the judge events: a certificate scored by two
judges is under each of them (never under "a+b"), and a failed run's judge cost is under the judge that
spent it (never under null). Real NATS, Postgres and Redis; the projected aggregates and the scan agree."""

from __future__ import annotations

import random

import pytest

from api.auth import Principal
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import load_keyring, publish_keys
from echelon_platform.config import Settings
from echelon_platform.domain.events import RunFailed, make_event
from tests.integration.test_api_support import certified_run, drain, publish
from tests.integration.test_stats_aggregates import judge_call, projected, scanned

ADMIN = Principal("root", is_admin=True)


async def test_stats_by_judge_split_mixed_certificates_and_failed_runs_by_their_judge_events(
    settings: Settings, services: Services
) -> None:
    keyring = load_keyring(settings)
    await publish_keys(services.store, keyring)
    rng = random.Random(23)
    mixed, cert = certified_run(
        "MIX",
        scores=[{"model": "judge-x", "supported": 4}, {"model": "judge-y", "supported": 0}],
        keyring=keyring,
    )
    calls_x = [judge_call("MIX", "MIX-0000", n, rng).model_copy() for n in range(2)]
    calls_y = [judge_call("MIX", "MIX-0001", 5, rng)]
    failed, _ = certified_run("FAIL", scores=[{"model": "judge-x"}], keyring=keyring)
    *work, _issued, _completed = failed
    calls_failed = [judge_call("FAIL", "FAIL-0000", 7, rng)]
    for event, judge in [*((c, "judge-x") for c in calls_x), (calls_y[0], "judge-y"), (calls_failed[0], "judge-x")]:
        event.payload["judge"] = judge
    log = [
        *mixed,
        *calls_x,
        *calls_y,
        *work,
        make_event(RunFailed(run_id="FAIL", reason="all replays failed", stage="certify")),
        *calls_failed,
    ]
    await publish(services, log)
    await drain(services, settings)

    total, rows = await projected(services.read_models, ADMIN, "scoring_model")
    by_key = {row.key: row for row in rows}
    assert set(by_key) == {"judge-x", "judge-y"}  # no "judge-x+judge-y", no null
    cost = {
        j: sum(e.payload["cost_usd"] for e in log if e.topic == "verify.judge.called" and e.payload["judge"] == j)
        for j in ("judge-x", "judge-y")
    }
    assert by_key["judge-x"].total_cost_usd == pytest.approx(cost["judge-x"], abs=1e-6)
    assert by_key["judge-y"].total_cost_usd == pytest.approx(cost["judge-y"], abs=1e-6)
    # The failed run is under the judge that spent for it; the mixed certificate under each of its judges,
    # with the composite of the replays each scored.
    assert (by_key["judge-x"].runs, by_key["judge-x"].failed, by_key["judge-x"].certificates) == (2, 1, 1)
    assert (by_key["judge-y"].runs, by_key["judge-y"].certificates) == (1, 1)
    assert by_key["judge-x"].mean_composite > by_key["judge-y"].mean_composite
    assert cert.scoring_model == "judge-x+judge-y" and cert.mixed_judges
    assert [total, rows] == [len(rows), await scanned(services, ADMIN, "scoring_model")]
