"""Acceptance: one request must never take the service down. `echelon stack up` the README's way (embedded
servers, every role in one process), then the request that used to kill it: an unauthenticated POST of
220 KB of nested brackets to /api/v1/auth/session (CPython's C JSON scanner overflowed the C stack once
eth_account had raised the recursion limit to 100,000: SIGSEGV, every role and server gone)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import httpx

from tests.cli import ROOT, cli_env
from tests.helpers import wait_for

ATTACK = b"[" * 110_000 + b"]" * 110_000


async def test_the_nested_body_is_refused_and_the_stack_keeps_serving(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = cli_env(ECHELON_DATA_DIR=str(data_dir), ECHELON_API_PORT="0")
    log_path = tmp_path / "stack.log"
    with log_path.open("wb") as log_file:
        stack = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "echelon.cli", "stack", "up", cwd=ROOT, env=env, stdout=log_file, stderr=log_file
        )
    try:
        endpoint = data_dir / "api.json"
        await wait_for(lambda: endpoint.exists() or stack.returncode is not None, timeout=120, what="the stack's API")
        assert stack.returncode is None, log_path.read_text()[-4000:]
        url = json.loads(endpoint.read_text())["url"]
        async with httpx.AsyncClient(base_url=url, timeout=30) as api:
            assert len(ATTACK) == 220_000
            for content_type in ("application/json", None):
                headers = {"Content-Type": content_type} if content_type else {}
                refused = await api.post("/api/v1/auth/session", content=ATTACK, headers=headers)
                assert refused.status_code == 422, refused.text
                assert "deeper than 32 levels" in refused.json()["detail"]
            nan = await api.post(
                "/api/v1/auth/session", content=b'{"address": NaN}', headers={"Content-Type": "application/json"}
            )
            assert nan.status_code == 422 and "non-finite number" in nan.json()["detail"], nan.text
            # A normal request, on the same connection, then a new one: both served.
            nonce = await api.get("/api/v1/auth/nonce")
            assert nonce.status_code == 200 and nonce.json()["nonce"], nonce.text
        async with httpx.AsyncClient(base_url=url, timeout=30) as fresh:
            ready = await fresh.get("/readyz")
            assert ready.status_code == 200, ready.text
        assert stack.returncode is None, log_path.read_text()[-4000:]
    finally:
        if stack.returncode is None:
            stack.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(stack.wait(), 60)
        except TimeoutError:
            stack.kill()
            await stack.wait()
    assert stack.returncode == 0, log_path.read_text()[-4000:]
