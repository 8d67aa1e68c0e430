"""Fake flows: realistic runs published through the bus with no oracle and no judge reach the read models
like real ones (progress, failures, certificates that verify), and the script serves a stack for them."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
from collections import Counter
from pathlib import Path

from api.app import create_app
from coordinator.assembly import coordinators_for
from echelon.fake_flow import FlowConfig, interleave, publish_flows
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import load_keyring, publish_keys
from echelon_platform.config import Settings
from tests.cli import ROOT, cli_env
from tests.helpers import wait_for
from tests.integration.test_api_support import API, auth, http_client


def test_each_run_keeps_its_order_while_runs_interleave() -> None:
    keyring_sign = lambda cert: cert  # noqa: E731 (order only)
    config = FlowConfig(runs=12, concurrent=4, run_failure=0.25, replay_failure=0.2, seed=7)
    events = list(interleave(random.Random(7), config, keyring_sign))
    by_run: dict[str, list[str]] = {}
    for e in events:
        by_run.setdefault(e.run_id, []).append(e.topic)
    assert len(by_run) == 12
    switches = sum(1 for a, b in itertools.pairwise(events) if a.run_id != b.run_id)
    assert switches > 12  # runs really interleave
    for topics in by_run.values():
        assert topics[0] == "verify.run.requested" and topics[-1] in ("verify.run.completed", "verify.run.failed")
        assert topics.count("verify.run.requested") == 1


async def test_fake_flows_reach_the_read_models_with_verified_certificates(
    settings: Settings, services: Services
) -> None:
    config = FlowConfig(runs=8, replays=(2, 5), rate=5000, concurrent=4, run_failure=0.3, replay_failure=0.2, seed=11)
    keyring = load_keyring(settings)
    await publish_keys(services.store, keyring)
    expected = Counter(e.topic for e in interleave(random.Random(config.seed), config, keyring.sign))
    async with coordinators_for(services, settings) as writer, http_client(create_app(settings, services)) as client:
        task = asyncio.create_task(writer.run())
        try:
            report = await publish_flows(services.bus.publish_many, config, keyring.sign)
            assert report.events == sum(expected.values())

            async def settled() -> dict[str, int] | None:
                listed = await client.get(f"{API}/runs", params={"limit": 100}, headers=auth(settings, "local"))
                runs = listed.json()["runs"]
                statuses = Counter(r["status"] for r in runs)
                done = statuses["COMPLETED"] + statuses["FAILED"]
                return dict(statuses) if len(runs) == config.runs and done == config.runs else None

            statuses = await wait_for(settled, timeout=60, what="every fake run to end")
        finally:
            writer.stop()
            await asyncio.wait_for(task, 30)
        assert statuses.get("COMPLETED", 0) == expected["verify.run.completed"] > 0
        assert statuses.get("FAILED", 0) == expected["verify.run.failed"] > 0
        certificates = (await client.get(f"{API}/certificates", params={"limit": 100})).json()["certificates"]
        assert len(certificates) == expected["verify.certificate.issued"]
        for cert in certificates:
            verdict = (await client.get(f"{API}/certificates/{cert['id']}/verify")).json()
            assert verdict["valid"], verdict


async def test_the_script_serves_a_stack_publishes_and_stops_cleanly(settings: Settings, tmp_path: Path) -> None:
    env = cli_env(
        NATS_URL=str(settings.nats_url),
        DATABASE_URL=str(settings.database_url),
        REDIS_URL=str(settings.redis_url),
        ECHELON_STREAM_NAME=settings.stream_name,
        ECHELON_SUBJECT_ROOT=settings.subject_root,
        ECHELON_REDIS_PREFIX=settings.redis_prefix,
        ECHELON_CONSUMER_PREFIX=settings.consumer_prefix,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scripts" / "publish_fake_flow.py"), "--runs", "5", "--rate", "500",
        "--seed", "3", "--api-port", "0", "--data-dir", str(tmp_path / "data"), "--exit-when-done", "--json",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = out.decode().splitlines()
    assert lines[0].startswith("dashboard: http://127.0.0.1:")
    report = json.loads(lines[-1])
    assert report["runs"] == 5 and report["events"] > 5 * 4
