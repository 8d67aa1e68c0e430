"""The writer draining a backlog, side by side with two naive loops, in one run on the same servers.

    python scripts/bench_drain.py [--events 100000] [--order a,b,ours] [--partitions 1 2 4]

Pre-fills a fresh stream with N realistic events (those the coordinator accepts), then times, each with its
own durable consumer, scratch table and key prefix:
  naive_a  nats-py `fetch(256)` -> one Postgres tx (`unnest` insert into a copy of `events`, ON CONFLICT
           DO NOTHING) -> one Redis pipeline (HSET + ZADD per event) -> ack each
  naive_b  the same, with a continuous pull: the next batch is requested (plain pull API, callback
           subscription) before the current one is written
  ours     the StateCoordinator (`coordinator_for(...)`, `run(until_idle=True)`), timed to its last batch
and prints one JSON line per measurement, then the ratios to the better naive loop.

`--partitions P...`: for each P (1 included) our writer also runs as P `python -m echelon coordinator`
processes (ECHELON_PARTITIONS=P, ECHELON_WRITER_PARTITIONS=k) on a fresh backlog, seeded through the
product's Bus so subjects carry the partition token; drained = every pre-filled event appended (counted in
Postgres), timed from the start of the first process, reported raw and minus the idle start-up time of one
process (measured before), with each component's CPU per event (writers, NATS, Postgres, Redis) for the
many-host model (scripts/model_scaleout.py). Uses the configured NATS_URL/DATABASE_URL/REDIS_URL, else embedded
servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import nats
import nats.errors
import orjson
import psutil
import redis.asyncio as aioredis
from cryptography.fernet import Fernet
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reuse the test factories

from coordinator.assembly import coordinator_for
from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import Subjects
from echelon_platform.domain.partitions import Partitioning
from scripts.bench_spine import synthetic_events
from scripts.benchlib import ROOT, isolated, servers

BATCH = 256
PUBLISH_CHUNK = 2000
# Announcements the writer itself publishes while draining (one per run whose replays are all scored):
# not part of the backlog, so "drained" counts only the other topics.
ANNOUNCEMENT_TOPIC = "verify.run.certifying"

_INSERT = """
INSERT INTO {table} (event_id, dedup_key, time, topic, correlation_id, causation_id, payload, version, stream_seq)
SELECT event_id, dedup_key, time::timestamptz, topic, correlation_id, causation_id, payload::jsonb, version,
       stream_seq
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[],
            $9::bigint[]) AS t(event_id, dedup_key, time, topic, correlation_id, causation_id, payload, version,
                               stream_seq)
ON CONFLICT DO NOTHING
"""


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


async def prefill(bus: Bus, n: int) -> float:
    """Publish N synthetic events (pipelined, in chunks); returns the publish rate."""
    started = time.perf_counter()
    done = 0
    while done < n:
        chunk = synthetic_events(min(PUBLISH_CHUNK * 5, n - done))
        for i in range(0, len(chunk), PUBLISH_CHUNK):
            await bus.publish_many(chunk[i : i + PUBLISH_CHUNK], timeout=60)
        done += len(chunk)
    return n / (time.perf_counter() - started)


async def checkpoint(database_url: str) -> None:
    """Level the ground between measurements: flush the previous one's dirty pages now, not during the next."""
    conn = await asyncpg.connect(database_url)
    try:
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


# ---- the naive loops ----


class NaiveSink:
    """What both naive loops do with a batch: one Postgres tx, one Redis pipeline, then ack each message."""

    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, table: str, prefix: str) -> None:
        self.pool = pool
        self.redis = redis
        self.insert = _INSERT.format(table=table)
        self.prefix = prefix

    async def write(self, msgs: list[Msg]) -> None:
        docs = [orjson.loads(m.data) for m in msgs]
        seqs = [m.metadata.sequence.stream for m in msgs]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                self.insert,
                [d["eventId"] for d in docs],
                [d["dedupKey"] for d in docs],
                [d["timestamp"] for d in docs],
                [d["topic"] for d in docs],
                [d["correlationId"] for d in docs],
                [d.get("causationId") for d in docs],
                [orjson.dumps(d["payload"]).decode() for d in docs],
                [d["version"] for d in docs],
                seqs,
            )
        async with self.redis.pipeline() as pipe:
            for d, seq in zip(docs, seqs, strict=True):
                run = d["correlationId"]
                pipe.hset(f"{self.prefix}run:{run}", mapping={"topic": d["topic"], "seq": seq})
                pipe.zadd(f"{self.prefix}runs", {run: seq})
            await pipe.execute()
        for m in msgs:
            await m.ack()


async def add_consumer(nc: NATS, stream: str, durable: str, filter_subject: str) -> None:
    await nc.jetstream().add_consumer(
        stream,
        ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=filter_subject,
            ack_wait=60,
            max_ack_pending=20_000,
        ),
    )


async def naive_a(nc: NATS, sink: NaiveSink, stream: str, durable: str, filter_subject: str, n: int) -> int:
    """nats-py's own pull loop: fetch, write, ack, fetch again."""
    psub = await nc.jetstream().pull_subscribe(filter_subject, durable=durable, stream=stream)
    done = 0
    try:
        while done < n:
            try:
                msgs = await psub.fetch(min(BATCH, n - done), timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            await sink.write(msgs)
            done += len(msgs)
    finally:
        await psub.unsubscribe()
    return done


async def naive_b(nc: NATS, sink: NaiveSink, stream: str, durable: str, n: int) -> int:
    """A hand-rolled continuous pull: the next batch is already on its way while this one is written."""
    inbox = nc.new_inbox()
    buffer: list[Msg] = []
    over = asyncio.Event()
    state = {"asked": 0, "got": 0}

    async def on_message(msg: Msg) -> None:
        if not msg.data and (msg.headers or {}).get("Status"):
            over.set()  # 404/408: this request is finished
            return
        buffer.append(msg)
        state["got"] += 1
        if state["got"] >= state["asked"]:
            over.set()

    async def ask(batch: int) -> None:
        over.clear()
        state["asked"], state["got"] = batch, 0
        await nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
            orjson.dumps({"batch": batch, "no_wait": True}),
            reply=inbox,
        )

    sub = await nc.subscribe(inbox, cb=on_message)
    done = 0
    try:
        await ask(min(BATCH, n))
        while done < n:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await over.wait()
            batch = buffer[:]
            buffer.clear()
            if done + len(batch) < n:
                await ask(min(BATCH, n - done - len(batch)))  # before writing this batch
            if batch:
                await sink.write(batch)
                done += len(batch)
    finally:
        await sub.unsubscribe()
    return done


async def run_naive(settings: Settings, name: str, n: int) -> dict[str, Any]:
    table, prefix, durable = f"naive_{name}", f"{settings.redis_prefix}naive_{name}:", f"naive-{name}"
    everything = Subjects(settings.subject_root).everything
    nc = await nats.connect(str(settings.nats_url), name=f"bench-naive-{name}")
    pool = await asyncpg.create_pool(str(settings.database_url), min_size=1, max_size=2)
    redis = aioredis.Redis.from_url(str(settings.redis_url))
    try:
        await pool.execute(f"CREATE TABLE {table} (LIKE events INCLUDING ALL)")
        await add_consumer(nc, settings.stream_name, durable, everything)
        sink = NaiveSink(pool, redis, table, prefix)
        started = time.perf_counter()
        if name == "a":
            done = await naive_a(nc, sink, settings.stream_name, durable, everything, n)
        else:
            done = await naive_b(nc, sink, settings.stream_name, durable, n)
        seconds = time.perf_counter() - started
        stored = await pool.fetchval(f"SELECT count(*) FROM {table}")
    finally:
        await redis.aclose()
        await pool.close()
        await nc.drain()
    return {
        "measure": f"naive_{name}",
        "events": done,
        "stored_rows": stored,
        "seconds": round(seconds, 3),
        "events_per_s": round(n / seconds),
    }


# ---- our writer ----


@contextlib.contextmanager
def sampled(out: Path | None) -> Iterator[None]:
    """py-spy sampling this process (collapsed stacks into `out`) for the duration of the block."""
    if out is None:
        yield
        return
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spy = subprocess.Popen(
        [exe, "record", "--pid", str(os.getpid()), "--rate", "200", "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached before the first batch
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


async def run_ours(services: Services, settings: Settings, n: int, profile: Path | None = None) -> dict[str, Any]:
    """The coordinator in this process; drained = its last batch (a watcher notes when `received` moves)."""
    async with coordinator_for(services, settings) as coordinator:
        last = {"received": 0, "at": 0.0}

        async def watch() -> None:
            while True:
                if coordinator.stats.received != last["received"]:
                    last["received"], last["at"] = coordinator.stats.received, time.perf_counter()
                await asyncio.sleep(0.005)

        with sampled(profile):
            started = time.perf_counter()
            watcher = asyncio.create_task(watch())
            stats = await coordinator.run(until_idle=True)
            total = time.perf_counter() - started
            watcher.cancel()
    seconds = last["at"] - started
    announced = await services.store.pool.fetchval("SELECT count(*) FROM events WHERE topic = $1", ANNOUNCEMENT_TOPIC)
    return {
        "measure": "ours",
        "partitions": 1,
        "batch": settings.coordinator_batch,
        "events": n,
        "received": stats.received,  # the backlog plus the announcements it published itself
        "announcements": announced,
        "batches": stats.batches,
        "appended": stats.appended,
        "parked": stats.parked,
        "seconds": round(seconds, 3),
        "run_until_idle_seconds": round(total, 3),
        "events_per_s": round(n / seconds),
        "received_per_s": round(stats.received / seconds),
    }


# ---- our writer as P processes ----


def _command() -> list[str]:
    module = "echelon" if (ROOT / "echelon" / "__main__.py").exists() else "echelon.cli"
    return [sys.executable, "-m", module, "coordinator"]


def writer_env(settings: Settings, partitions: int, k: int, data_dir: Path, secret_key: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ECHELON_")}
    env.update(
        NATS_URL=str(settings.nats_url),
        DATABASE_URL=str(settings.database_url),
        REDIS_URL=str(settings.redis_url),
        ECHELON_STREAM_NAME=settings.stream_name,
        ECHELON_SUBJECT_ROOT=settings.subject_root,
        ECHELON_REDIS_PREFIX=settings.redis_prefix,
        ECHELON_CONSUMER_PREFIX=settings.consumer_prefix,
        ECHELON_FETCH_TIMEOUT_S=str(settings.fetch_timeout_s),
        ECHELON_COORDINATOR_BATCH=str(settings.coordinator_batch),
        ECHELON_PARTITIONS=str(partitions),
        ECHELON_WRITER_PARTITIONS=str(k),
        ECHELON_DATA_DIR=str(data_dir),
        ECHELON_SECRET_KEY=secret_key,  # generated once here: P processes would race to create one
        ECHELON_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    return env


def start_writers(settings: Settings, partitions: int, ks: list[int], data_dir: Path, key: str) -> list[Any]:
    procs = []
    for k in ks:
        with open(data_dir / f"writer-{partitions}-{k}.log", "ab") as log:  # the child keeps its own copy
            procs.append(
                subprocess.Popen(
                    _command(),
                    env=writer_env(settings, partitions, k, data_dir, key),
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
    return procs


def stop_writers(procs: list[Any]) -> list[int | None]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(30))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


async def wait_appended(
    database_url: str, target: int, procs: list[Any], limit_s: float, near: int | None = None
) -> float:
    """Poll Postgres until `target` backlog events are in `events`; returns perf_counter() then. Polls
    slowly while far away (a count costs the writers CPU on a small machine), quickly near the end."""
    conn = await asyncpg.connect(database_url)
    deadline = time.perf_counter() + limit_s
    near = target * 9 // 10 if near is None else near
    try:
        while True:
            count = await conn.fetchval("SELECT count(*) FROM events WHERE topic <> $1", ANNOUNCEMENT_TOPIC)
            now = time.perf_counter()
            if count >= target:
                return now
            if now > deadline or any(p.poll() is not None for p in procs):
                codes = [p.poll() for p in procs]
                raise RuntimeError(f"{count}/{target} events appended after {limit_s}s; writer exit codes {codes}")
            await asyncio.sleep(0.02 if count >= near else 0.2)
    finally:
        await conn.close()


async def seed_partitioned(settings: Settings, partitions: int, n: int) -> float:
    """Through the product's Bus with partitioned subjects, as producers publish them."""
    subjects = Subjects(settings.subject_root, Partitioning(partitions))
    async with Bus(str(settings.nats_url), stream=settings.stream_name, subjects=subjects) as bus:
        return await prefill(bus, n)


async def idle_startup(base: Settings, urls: Any, partitions: int, data_dir: Path, key: str) -> tuple[float, float]:
    """Seconds from spawning one writer (partition 0 of P) to its first append, on a near-empty stream, and
    the CPU seconds it used by then (imports, connections, lease, heal)."""
    settings = await isolated(base, urls)
    await seed_partitioned(settings, partitions, 64)  # 64 runs' first events: some land on partition 0
    started = time.perf_counter()
    procs = start_writers(settings, partitions, [0], data_dir, key)
    try:
        done = await wait_appended(str(settings.database_url), 1, procs, 120, near=0)
        cpu = _cpu(psutil.Process(procs[0].pid))
    finally:
        stop_writers(procs)
    return done - started, cpu


async def run_partitioned(base: Settings, urls: Any, partitions: int, n: int, data_dir: Path) -> dict[str, Any]:
    key = Fernet.generate_key().decode()
    startup, startup_cpu = await idle_startup(base, urls, partitions, data_dir, key)
    emit(
        {
            "measure": "writer_idle_startup",
            "partitions": partitions,
            "seconds": round(startup, 3),
            "cpu_seconds": round(startup_cpu, 3),
        }
    )
    settings = await isolated(base, urls)
    publish_rate = await seed_partitioned(settings, partitions, n)
    await checkpoint(str(settings.database_url))
    servers_cpu = ServerCpu(settings)
    started = time.perf_counter()
    procs = start_writers(settings, partitions, list(range(partitions)), data_dir, key)
    writers_cpu = [psutil.Process(p.pid) for p in procs]
    try:
        done = await wait_appended(str(settings.database_url), n, procs, 600)
        # The writers' steady-state CPU: minus each process's start-up (measured above).
        writers = sum(_cpu(p) for p in writers_cpu) - partitions * startup_cpu
        used = servers_cpu.used() | {"writers": max(writers, 0.0)}
    finally:
        codes = stop_writers(procs)
    raw = done - started
    net = max(raw - startup, 1e-3)
    return {
        "measure": "ours",
        "partitions": partitions,
        "batch": settings.coordinator_batch,
        "events": n,
        "prefill_publish_events_per_s": round(publish_rate),
        "seconds_raw": round(raw, 3),
        "idle_startup_seconds": round(startup, 3),
        "seconds": round(net, 3),
        "events_per_s_raw": round(n / raw),
        "events_per_s": round(n / net),
        "writer_exit_codes": codes,
        # CPU seconds each component spent per backlog event during the drain (start-up included for the
        # writers): the inputs of the many-host model (scripts/model_scaleout.py).
        "cpu_us_per_event": {k: round(v / n * 1e6, 1) for k, v in used.items()},
    }


def _cpu(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


class ServerCpu:
    """CPU used by the NATS, Postgres (postmaster and every backend) and Redis servers behind `settings`,
    found by the ports they listen on, from creation to `used()`."""

    def __init__(self, settings: Settings) -> None:
        ports = {
            "nats": urlsplit(str(settings.nats_url).split(",")[0]).port or 4222,
            "postgres": urlsplit(str(settings.database_url)).port or 5432,
            "redis": urlsplit(str(settings.redis_url)).port or 6379,
        }
        listeners = {
            getattr(c.laddr, "port", None): c.pid
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid
        }
        self.procs = {name: psutil.Process(listeners[port]) for name, port in ports.items() if port in listeners}
        self.before = self._sample()

    def _sample(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for name, proc in self.procs.items():
            family = [proc, *proc.children(recursive=True)] if name == "postgres" else [proc]
            out[name] = {p.pid: _cpu(p) for p in family}
        return out

    def used(self) -> dict[str, float]:
        after = self._sample()
        return {
            name: sum(cpu - self.before[name].get(pid, 0.0) for pid, cpu in pids.items())
            for name, pids in after.items()
        }


# ---- one run ----


async def bench(
    base: Settings, urls: Any, n: int, order: list[str], profile: Path | None = None
) -> dict[str, dict[str, Any]]:
    settings = await isolated(base, urls)
    results: dict[str, dict[str, Any]] = {}
    async with Services(settings, name="bench-drain", pool_size=4) as services:
        rate = await prefill(services.bus, n)
        emit({"measure": "prefill", "events": n, "publish_events_per_s": round(rate)})
        runners: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
            "a": lambda: run_naive(settings, "a", n),
            "b": lambda: run_naive(settings, "b", n),
            "ours": lambda: run_ours(services, settings, n, profile),
        }
        for name in order:
            await checkpoint(str(settings.database_url))
            cpu = time.process_time()
            results[name] = await runners[name]()
            # This process's CPU (user + sys) per event: steadier than wall time on a shared machine.
            results[name]["client_cpu_us_per_event"] = round((time.process_time() - cpu) / n * 1e6, 1)
            emit(results[name])
    return results


def ratios(results: dict[str, dict[str, Any]], ours: dict[str, Any]) -> dict[str, Any]:
    naive = {k: v["events_per_s"] for k, v in results.items() if k in ("a", "b")}
    if not naive:
        return {}
    best = max(naive, key=naive.__getitem__)
    out: dict[str, Any] = {
        "measure": "ratio",
        "partitions": ours["partitions"],
        "ours_events_per_s": ours["events_per_s"],
        "best_naive": f"naive_{best}",
        "best_naive_events_per_s": naive[best],
        "ours_vs_best_naive": round(ours["events_per_s"] / naive[best], 3),
        **{f"ours_vs_naive_{k}": round(ours["events_per_s"] / v, 3) for k, v in naive.items()},
    }
    if "events_per_s_raw" in ours:
        out["ours_raw_vs_best_naive"] = round(ours["events_per_s_raw"] / naive[best], 3)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--order", default="a,b,ours", help="measurements of the P=1 run, in this order")
    parser.add_argument("--partitions", type=int, nargs="+", default=[1])
    parser.add_argument("--writer-batch", type=int, help="our writer's batch size (ECHELON_COORDINATOR_BATCH)")
    parser.add_argument("--py-spy", type=Path, metavar="OUT", help="sample our P=1 writer into OUT (collapsed)")
    args = parser.parse_args()
    order = [o.strip() for o in args.order.split(",") if o.strip()]
    if unknown := set(order) - {"a", "b", "ours"}:
        parser.error(f"unknown measurement(s) {sorted(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings(data_dir=Path(tmp))
        if args.writer_batch:
            base = base.model_copy(update={"coordinator_batch": args.writer_batch})
        async with servers(base, Path(tmp)) as (urls, embedded):
            emit({"measure": "setup", "events": args.events, "embedded": embedded, "nats_sync_always": embedded})
            results = await bench(base, urls, args.events, order, args.py_spy)
            if "ours" in results and 1 in args.partitions and (ratio := ratios(results, results["ours"])):
                emit(ratio)
            # Every P (1 too) as writer processes, so the P's are measured alike.
            for p in args.partitions:
                ours = await run_partitioned(base, urls, p, args.events, Path(tmp))
                emit(ours)
                if ratio := ratios(results, ours):
                    emit(ratio)


if __name__ == "__main__":
    asyncio.run(main())
