"""Shared pieces of the benchmark scripts: a server process under test, and `wrk` as the load generator
(a Python load generator saturates a core before the server does)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import nats
import nats.js.errors
import redis.asyncio as aioredis
from ulid import ULID

from echelon.embedded import EmbeddedStack, StackUrls, create_database
from echelon_platform.adapters.migrations import migrate
from echelon_platform.config import Settings

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def servers(base: Settings, data_dir: Path, *, sync_always: bool = True) -> AsyncIterator[tuple[StackUrls, bool]]:
    """The configured NATS/Postgres/Redis, else embedded ones; yields (urls, embedded?)."""
    if base.infra_configured():
        urls = GivenServers(str(base.nats_url), str(base.database_url), str(base.redis_url))
        try:
            yield urls, False
        finally:
            try:
                await discard_isolated(urls)
            except Exception as exc:  # the benchmark's own result or error comes first
                print(f"benchlib: could not remove what the benchmark made: {exc}", file=sys.stderr)
        return
    async with EmbeddedStack(data_dir / "stack", nats_sync_always=sync_always) as stack:
        yield stack.urls, True


async def isolated(base: Settings, urls: StackUrls) -> Settings:
    """Own stream, subjects, keys and database, so each phase measures only its own events."""
    tag = str(ULID()).lower()
    if isinstance(urls, GivenServers):
        urls.made.append(tag)
    db = await create_database(urls.database_url, f"bench_{tag}")
    await migrate(db)
    return base.model_copy(
        update={
            "nats_url": urls.nats_url,
            "database_url": db,
            "redis_url": urls.redis_url,
            "stream_name": f"BENCH{tag.upper()}",
            "subject_root": f"b{tag}",
            "redis_prefix": f"b{tag}:",
            "consumer_prefix": f"b{tag}",
            "fetch_timeout_s": 0.5,
            # The per-user rate limit would turn a load test into 429s.
            "runs_per_minute": 10**9,
        }
    )


@dataclass(frozen=True, repr=False)
class GivenServers(StackUrls):
    """Servers the benchmark was given (not embedded): `isolated` notes what it makes on them."""

    made: list[str] = field(default_factory=list)  # the tags of the streams, databases and key prefixes


async def discard_isolated(urls: GivenServers) -> None:
    """Remove exactly the streams, databases and keys `isolated` made on servers we were given (an embedded
    stack goes with its directory). Left behind, they slow every later measurement: Postgres's autovacuum
    visits each database in turn, and 40 of them made the judge benchmark about 10% slower."""
    if not urls.made:
        return
    nc = await nats.connect(urls.nats_url)
    try:
        js = nc.jetstream()
        for tag in urls.made:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(f"BENCH{tag.upper()}")
    finally:
        await nc.close()
    conn = await asyncpg.connect(urls.database_url)
    try:
        for tag in urls.made:
            await conn.execute(f'DROP DATABASE IF EXISTS "bench_{tag}" WITH (FORCE)')
    finally:
        await conn.close()
    redis = aioredis.Redis.from_url(urls.redis_url)
    try:
        for tag in urls.made:
            keys = [k async for k in redis.scan_iter(match=f"b{tag}:*", count=1000)]
            for i in range(0, len(keys), 1000):
                await redis.delete(*keys[i : i + 1000])
    finally:
        await redis.aclose()


def server_env(settings: Settings) -> dict[str, str]:
    """Settings as ECHELON_* variables for a server started in another process."""
    env = {**os.environ, "ECHELON_LOG_LEVEL": "INFO"}
    # Only what differs from the defaults: a list's str() is not every list field's env form.
    for key, value in settings.model_dump(exclude_defaults=True).items():
        if value is not None and key not in ("jwt_secret", "oracle_allowlist", "secret_key", "api_token"):
            env[f"ECHELON_{key.upper()}"] = str(value)
    env["ECHELON_JWT_SECRET"] = settings.jwt_secret.get_secret_value()
    return env


@asynccontextmanager
async def uvicorn_process(target: str, port: int, env: dict[str, str]) -> AsyncIterator[str]:
    """`python -m uvicorn --factory target` on port; yields its base URL once it answers."""
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
        [sys.executable, "-m", "uvicorn", "--factory", target, "--port", str(port), "--no-access-log",
         "--log-level", "warning", "--app-dir", str(ROOT / "scripts")],
        env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"{target} did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return round(float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], 3)


def wrk(
    url: str, headers: dict[str, str], concurrency: int, seconds: int, *, post_json: str | None = None
) -> dict[str, float]:
    """Latency p50/p99 and throughput of `url` under `concurrency` connections (one wrk thread)."""
    args = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    script = None
    if post_json is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            body = post_json.replace("\\", "\\\\").replace("'", "\\'")
            script.write(
                f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n"
            )
        args += ["-s", script.name]
    try:
        out = subprocess.run([*args, url], check=True, capture_output=True, text=True).stdout
    finally:
        if script is not None:
            os.unlink(script.name)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
        "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": int(errors.group(1)) if errors else 0,
    }
