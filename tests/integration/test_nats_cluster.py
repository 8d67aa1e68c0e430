"""A 3-node JetStream cluster (the nats-server binary the project installs), stream at 3 replicas: under
load, the node leading the stream is killed with SIGKILL and restarted. No acknowledged event is lost, the
writer logs every one of them once; stage workers sharing a stage keep sharing it, and runs complete."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import nats.errors
import pytest

from api.app import create_app
from api.auth import issue_jwt
from coordinator.assembly import coordinator_for, coordinators_for
from echelon.embedded import ClusterRoute, EmbeddedNats
from echelon.embedded._process import free_port
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.errors import BusError
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.pipeline import Pipeline
from tests.factories import requested
from tests.helpers import wait_for


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[EmbeddedNats]]:
    client_ports = [free_port() for _ in range(3)]
    route_ports = [free_port() for _ in range(3)]
    nodes = [
        EmbeddedNats(
            tmp_path / f"n{i}",
            port=client_ports[i],
            cluster=ClusterRoute("echelon-test", route_ports[i], tuple(p for p in route_ports if p != route_ports[i])),
        )
        for i in range(3)
    ]
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        yield nodes
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                await node.stop(force=True)


async def _leader_index(services: Services, nodes: list[EmbeddedNats]) -> int:
    info = await services.bus.js.stream_info(services.bus.stream)
    leader = info.cluster.leader if info.cluster else None
    return next(i for i, n in enumerate(nodes) if n.server_name == leader)


@pytest.mark.timeout(240)
async def test_killing_the_stream_leader_loses_no_acknowledged_event(
    settings: Settings, cluster: list[EmbeddedNats]
) -> None:
    url = ",".join(n.url for n in cluster)
    settings = settings.model_copy(update={"nats_url": url, "stream_replicas": 3})

    async def stream_ready() -> bool:
        try:
            async with Services(settings, name="probe"):
                return True
        except BusError:
            return False  # the cluster is still electing its meta leader

    await wait_for(stream_ready, timeout=60, what="a JetStream cluster that accepts the stream")
    async with Services(settings, name="test") as services, coordinator_for(services, settings) as coordinator:
        acked: list[str] = []
        ack_times: list[float] = []
        stop = asyncio.Event()

        async def load() -> None:
            i = 0
            while not stop.is_set():
                event = requested(f"CL{i:05d}")
                try:
                    await services.bus.publish(event, timeout=2.0)
                except BusError:
                    await asyncio.sleep(0.05)  # not acknowledged: the client retries a new event
                else:
                    acked.append(event.run_id)
                    ack_times.append(time.monotonic())
                i += 1

        writer = asyncio.create_task(coordinator.run())
        publisher = asyncio.create_task(load())
        try:
            await wait_for(lambda: len(acked) >= 100, timeout=60, what="load before the kill")
            victim = cluster[await _leader_index(services, cluster)]
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await wait_for(lambda: any(t > killed_at + 0.5 for t in ack_times), timeout=60, what="acks resuming")
            await victim.restart()
            before = len(acked)
            await wait_for(lambda: len(acked) >= before + 100, timeout=60, what="load after the restart")
        finally:
            stop.set()
            await publisher

        gaps = [b - a for a, b in itertools.pairwise(ack_times) if a >= killed_at - 1]
        print(f"acked={len(acked)} longest pause in acks around the kill: {max(gaps, default=0):.2f}s")

        async def all_logged() -> bool:
            return int(await services.store.pool.fetchval("SELECT count(*) FROM events")) >= len(acked)

        try:
            await wait_for(all_logged, timeout=90, what="every acknowledged event logged")
        finally:
            coordinator.stop()
            await asyncio.wait_for(writer, 20)
        logged = {r["correlation_id"] for r in await services.store.pool.fetch("SELECT correlation_id FROM events")}
        assert {f"run-{r}" for r in acked} <= logged
        info = await services.bus.js.stream_info(services.bus.stream)
        assert info.state.messages >= len(acked)


@pytest.mark.timeout(300)
async def test_stage_workers_share_the_work_and_runs_complete_through_a_node_kill(
    settings: Settings, cluster: list[EmbeddedNats], tmp_path: Path
) -> None:
    """Two worker processes' worth of stage workers (each its own NATS connection) and two partitioned
    writers on the 3-node cluster: the stream leader is SIGKILLed mid-run and restarted; every run still
    completes with one certificate, and both workers did part of the work."""
    url = ",".join(n.url for n in cluster)
    settings = settings.model_copy(
        update={"nats_url": url, "stream_replicas": 3, "partitions": 2, "ack_wait_s": 5.0, "max_deliver": 10}
    )

    async def stream_ready() -> bool:
        try:
            async with Services(settings, name="probe"):
                return True
        except BusError:
            return False

    await wait_for(stream_ready, timeout=60, what="a JetStream cluster that accepts the stream")
    repo = await materialise_sample_repo(tmp_path / "repo")
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(Services(settings, name="test"))
        writers = await stack.enter_async_context(coordinators_for(services, settings))
        pipelines = []
        for i in range(2):
            worker_services = await stack.enter_async_context(Services(settings, name=f"worker-{i}"))
            pipelines.append(await stack.enter_async_context(Pipeline(worker_services, settings)))
        app = create_app(settings, services)
        await stack.enter_async_context(app.router.lifespan_context(app))
        api = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        )
        tasks = [asyncio.create_task(writers.run()), *(asyncio.create_task(p.run(watchdog=False)) for p in pipelines)]
        headers = {"Authorization": f"Bearer {issue_jwt('alice', settings.jwt_secret.get_secret_value())}"}
        body = {
            "repo_url": str(repo),
            "construct_id": "sample-summariser",
            "oracle_type": "python",
            "oracle_module": "pipeline_workers.oracles.sample",
            "oracle_callable": "summarise",
            "limit": 6,
            "min_replays": 2,
        }
        # Both workers pull on every stage before any work exists (a busy cluster may take a while to create
        # a consumer): "both did part of the work" then depends on sharing, not on who subscribed first.
        durables = {w.durable for p in pipelines for w in p.workers}

        async def both_pulling() -> bool:
            for durable in durables:
                try:
                    info = await services.bus.js.consumer_info(settings.stream_name, durable)
                except (nats.errors.Error, TimeoutError):  # not created yet, or the cluster is busy
                    return False
                if (info.num_waiting or 0) < 2:
                    return False
            return True

        await wait_for(both_pulling, timeout=90, what="both workers pulling on every stage")
        try:
            run_ids = []
            for _ in range(6):
                response = await api.post("/api/v1/verification/runs", json=body, headers=headers)
                assert response.status_code == 201, response.text
                run_ids.append(response.json()["run_id"])
            victim = cluster[await _leader_index(services, cluster)]
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await victim.restart()

            async def all_done() -> bool:
                states = [await services.read_models.get_run(r) for r in run_ids]
                return all(s is not None and s.status.terminal for s in states)

            await wait_for(all_done, timeout=180, what="every run finished after the node kill")
            print(f"runs finished {time.monotonic() - killed_at:.1f}s after the kill")
        finally:
            writers.stop()
            for p in pipelines:
                p.stop()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        states = [await services.read_models.get_run(r) for r in run_ids]
        assert [s.status.name for s in states if s is not None] == ["COMPLETED"] * len(run_ids)
        certs = await services.store.pool.fetch(
            "SELECT correlation_id, count(*) AS n FROM events WHERE topic = 'verify.certificate.issued' "
            "GROUP BY correlation_id"
        )
        assert sorted(r["correlation_id"] for r in certs) == sorted(f"run-{r}" for r in run_ids)
        assert {r["n"] for r in certs} == {1}
        handled = [sum(w.stats.handled for w in p.workers) for p in pipelines]
        print(f"messages handled per worker: {handled}")
        assert all(n > 0 for n in handled), handled
