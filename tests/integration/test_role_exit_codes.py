"""A clean stop is exit 0 for every role process: SIGTERM to a running `echelon api`, `echelon worker` and
`echelon coordinator` (real processes on the test's servers), as a supervisor or `docker stop` sends it."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import nats.js.errors
import pytest

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.cli import ROOT, cli_env
from tests.helpers import wait_for


def role_env(settings: Settings) -> dict[str, str]:
    return cli_env(
        ECHELON_NATS_URL=str(settings.nats_url),
        ECHELON_DATABASE_URL=str(settings.database_url),
        ECHELON_REDIS_URL=str(settings.redis_url),
        ECHELON_STREAM_NAME=settings.stream_name,
        ECHELON_SUBJECT_ROOT=settings.subject_root,
        ECHELON_REDIS_PREFIX=settings.redis_prefix,
        ECHELON_CONSUMER_PREFIX=settings.consumer_prefix,
        ECHELON_DATA_DIR=str(settings.data_dir),
        ECHELON_API_PORT="0",
        ECHELON_JWT_SECRET=settings.jwt_secret.get_secret_value(),
        ECHELON_LOG_LEVEL="INFO",
    )


async def start_role(
    settings: Settings, log_path: Path, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    with log_path.open("wb") as log_file:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "echelon.cli",
            *args,
            cwd=ROOT,
            env=role_env(settings) | (env or {}),
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )


async def consumer_exists(services: Services, durable: str) -> bool:
    try:
        await services.bus.js.consumer_info(services.bus.stream, durable)
    except nats.js.errors.NotFoundError:
        return False
    return True


@pytest.mark.parametrize("role", ["api", "worker", "coordinator"])
async def test_sigterm_stops_a_role_process_with_exit_0(
    role: str, settings: Settings, services: Services, tmp_path: Path
) -> None:
    log_path = tmp_path / f"{role}.log"
    args = ("worker", "ingest", "certify") if role == "worker" else (role,)
    proc = await start_role(settings, log_path, *args)
    try:
        # Up and serving: the API announced its address, the worker and the coordinator hold their consumers.
        if role == "api":
            ready = lambda: (settings.data_dir / "api.json").exists()  # noqa: E731
        elif role == "worker":
            ready = lambda: consumer_exists(services, f"{settings.consumer_prefix}-certify")  # noqa: E731
        else:
            ready = lambda: consumer_exists(services, settings.writer_durable(0))  # noqa: E731
        await wait_for(ready, timeout=60, interval=0.1, what=f"the {role} process serving")
        assert proc.returncode is None, log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.wait_for(proc.wait(), 15)
        took = time.monotonic() - signalled
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, f"{role} exited {code} on SIGTERM:\n{log_path.read_text()[-3000:]}"
    assert took < 10
