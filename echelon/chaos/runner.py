"""`echelon chaos`: start a cluster, take a clean reference run, load it, inject faults for N rounds, drain,
check every invariant and return one JSON-able report."""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import structlog
from ulid import ULID

from api.tokens import issue_jwt
from echelon.chaos import probes
from echelon.chaos.checks import API, FIGURES, check_all, logged_runs, wait_terminal_in_log
from echelon.chaos.cluster import Cluster, Tuning, cluster, drop_database
from echelon.chaos.faults import Fault, Injector, available_kinds
from echelon.chaos.load import Load, run_body
from echelon.chaos.report import build
from echelon_platform.config import Settings
from echelon_platform.domain.stages import STAGE_NAMES
from echelon_platform.errors import InfrastructureError

log = structlog.get_logger(__name__)
USER = "chaos"
READY_DEADLINE_S = 120.0


@dataclass(frozen=True)
class ChaosConfig:
    rounds: int = 100
    seed: int | None = None
    runs_per_second: float = 1.0
    duration_s: float | None = None  # a time budget for the fault phase: fewer rounds when it runs out
    mean_gap_s: float = 3.0  # between a component's recovery and the next fault (uniform 0.2..2×mean)
    keyed_fraction: float = 0.5
    limit: int = 3  # changes per run (the sample repository's newest ones)
    drain_deadline_s: float = 300.0
    kinds: tuple[str, ...] | None = None  # restrict the faults; None → every kind we can inject
    # Timed faults (server outage, table lock, SIGSTOP) last a duration drawn uniformly from this range.
    outage_s: tuple[float, float] = (0.3, 0.3)
    overlap: int = 1  # faults of distinct kinds injected at once in each round
    work_dir: Path | None = None
    keep_work_dir: bool = False
    tuning: Tuning = field(default_factory=Tuning)


def schedule(kinds: tuple[str, ...], rounds: int, rng: random.Random, overlap: int = 1) -> list[tuple[str, ...]]:
    """Each kind once (in random order) before any repeats, so even a short run covers every component; with
    overlap > 1 each round adds other kinds (distinct within the round) injected at the same time."""
    first = list(kinds)
    rng.shuffle(first)
    primary = (first + [rng.choice(kinds) for _ in range(max(0, rounds - len(first)))])[:rounds]
    extra = min(max(0, overlap - 1), len(kinds) - 1)
    return [(k, *rng.sample([o for o in kinds if o != k], extra)) for k in primary]


async def _wait_ready(world: Cluster, http: httpx.AsyncClient) -> None:
    checks: dict[str, probes.Probe] = {
        "api": probes.api_healthy(world, http),
        "writer": probes.writer_elected(world, 0),
        "standby": probes.standbys_ready(world),
        **{f"worker-{s}": probes.stage_consuming(world, s, 0.0) for s in STAGE_NAMES},
    }
    for name, probe in checks.items():
        if await probes.until(probe, READY_DEADLINE_S, interval_s=0.2) is None:
            raise InfrastructureError(
                f"chaos cluster: {name} not ready in {READY_DEADLINE_S:g}s (logs: {world.work_dir})"
            )


async def _reference(http: httpx.AsyncClient, limit: int) -> dict[str, Any]:
    """The certificate figures of a clean run, before any fault: what every chaos run must also state."""
    created = await http.post(f"{API}/runs", json=run_body("chaos-reference", limit=limit))
    if created.status_code != 201:
        raise InfrastructureError(f"chaos reference run refused: {created.status_code} {created.text}")
    run_id = created.json()["run_id"]
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        view = (await http.get(f"{API}/runs/{run_id}")).json()
        if view["status"] == "COMPLETED":
            cert = (await http.get(f"{API}/certificates/{view['certificate_id']}")).json()
            return {k: cert[k] for k in FIGURES}
        if view["status"] == "FAILED":
            raise InfrastructureError(f"chaos reference run failed before any fault: {view['error']}")
        await asyncio.sleep(0.2)
    raise InfrastructureError("chaos reference run did not complete in time")


async def _read_models_settled(http: httpx.AsyncClient, runs: int, deadline_s: float = 60.0) -> None:
    """Wait until the API lists every logged run as COMPLETED or FAILED (the projection trails the log)."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            done = 0
            for status in ("COMPLETED", "FAILED"):
                done += (await http.get(f"{API}/runs", params={"status": status, "limit": 1})).json()["total"]
            if done >= runs:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        await asyncio.sleep(0.5)


async def run_chaos(base: Settings, config: ChaosConfig) -> dict[str, Any]:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe and check request is noise
    rng = random.Random(config.seed)
    work_dir = config.work_dir or (base.data_dir.resolve() / f"chaos-{str(ULID()).lower()}")
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    async with cluster(base, work_dir, config.tuning) as world:
        token = issue_jwt(USER, world.settings.jwt_secret.get_secret_value(), ttl_s=24 * 3600)
        async with httpx.AsyncClient(
            base_url=world.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
        ) as http:
            await _wait_ready(world, http)
            ready_s = time.monotonic() - started
            reference = await _reference(http, config.limit)
            log.info("chaos.reference", **reference)
            load = Load(world.api_url, token, config.runs_per_second, config.keyed_fraction, config.limit, rng)
            load_task = asyncio.create_task(load.run())
            faults = await _inject_rounds(world, http, rng, config, started)
            last_fault = time.monotonic()
            load.stop()
            await load_task
            load_stopped = time.monotonic()
            run_ids = {r.run_id for r in load.accepted() if r.run_id is not None}
            drain_s, still_open = await wait_terminal_in_log(world.database_url, run_ids, config.drain_deadline_s)
            drained = time.monotonic()
            findings = await _check(world, http, load, reference)
            timings = {
                "ready_s": round(ready_s, 3),
                "fault_phase_s": round(last_fault - started - ready_s, 3),
                "rounds_done": len(faults),
                "drain_after_load_stop_s": round(drain_s, 3),
                "drain_after_last_kill_s": round(drained - last_fault, 3),
                "load_stop_after_last_kill_s": round(load_stopped - last_fault, 3),
                "runs_open_at_drain_deadline": len(still_open),
                "total_s": round(time.monotonic() - started, 3),
            }
            report = build(
                config=_config_dict(config, world),
                faults=faults,
                exits=world.exits,
                load=load.summary(),
                reference=reference,
                findings=findings.as_dict(),
                timings=timings,
            )
    report["work_dir"] = str(work_dir)
    if report["ok"] and not config.keep_work_dir and config.work_dir is None:
        # Nothing to look into: leave the machine as we found it.
        shutil.rmtree(work_dir, ignore_errors=True)
        report["work_dir"] = None
        if base.database_url:
            await drop_database(base.database_url, world.database_name)
    return report


async def _check(world: Cluster, http: httpx.AsyncClient, load: Load, reference: dict[str, Any]) -> Any:
    conn = await asyncpg.connect(world.database_url)
    try:
        runs = len(await logged_runs(conn))
    finally:
        await conn.close()
    await _read_models_settled(http, runs)
    return await check_all(world, http, load.requests, reference)


async def _inject_rounds(
    world: Cluster, http: httpx.AsyncClient, rng: random.Random, config: ChaosConfig, started: float
) -> list[Fault]:
    kinds = tuple(k for k in (config.kinds or available_kinds(world)) if k in available_kinds(world))
    injector = Injector(world, http, rng, started, config.outage_s)
    faults: list[Fault] = []
    phase_started = time.monotonic()
    for i, round_kinds in enumerate(schedule(kinds, config.rounds, rng, config.overlap)):
        if config.duration_s is not None and time.monotonic() - phase_started > config.duration_s:
            log.warning("chaos.time_budget_spent", rounds_done=i, rounds=config.rounds)
            break
        # A random moment: a random pause after the previous components recovered.
        await asyncio.sleep(rng.uniform(0.2, 2 * config.mean_gap_s))
        # Overlapping faults start together; the round ends when every one of them has recovered.
        for fault in await asyncio.gather(*(injector.inject(kind) for kind in round_kinds)):
            faults.append(fault)
            log.info("chaos.fault", round=i + 1, overlapping=len(round_kinds), **fault.as_dict())
    return faults


def _config_dict(config: ChaosConfig, world: Cluster) -> dict[str, Any]:
    data = asdict(config)
    data["work_dir"] = str(data["work_dir"]) if data["work_dir"] else None
    data["outage_s"] = list(config.outage_s)
    data["kinds"] = list(config.kinds or available_kinds(world))
    data["embedded"] = {"nats": world.nats is not None, "redis": world.redis is not None}
    return data
