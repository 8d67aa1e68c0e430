"""Bus authentication on a real nats-server: one user per role, publish rights enforced by the server."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest

from echelon.embedded import EmbeddedNats
from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.services import nats_credentials
from echelon_platform.config import Settings
from echelon_platform.domain.bus_access import BusLayout
from echelon_platform.domain.events import CertificateIssued, Subjects, make_event
from echelon_platform.domain.roles import Role
from echelon_platform.errors import BusError
from tests.cli import ROOT, cli_env, run_cli
from tests.factories import certificate
from tests.helpers import wait_for

ROOT_SUBJECT = "authz"
LAYOUT = BusLayout(stream="AUTHZ", subject_root=ROOT_SUBJECT, consumer_prefix="authz")


@pytest.fixture
async def auth_nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path / "nats", auth=LAYOUT) as server:
        yield server


def _bus(server: EmbeddedNats, role: Role, stream: str) -> Bus:
    return Bus(
        server.url,
        stream=stream,
        subjects=Subjects(ROOT_SUBJECT),
        user=role.value,
        password=server.credentials()[role.value],
        provisions=role is Role.SETUP,
    )


async def test_only_the_certify_role_can_publish_a_certificate(auth_nats: EmbeddedNats) -> None:
    certificate_event = make_event(CertificateIssued(run_id="RUN1", certificate=certificate("RUN1")))
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    async with _bus(auth_nats, Role.SETUP, "AUTHZ"), _bus(auth_nats, Role.CERTIFY, "AUTHZ") as certify_bus:
        # The API role: the server drops the publish and says why; JetStream never acks it.
        api = await nats.connect(auth_nats.url, user="api", password=auth_nats.credentials()["api"], error_cb=on_error)
        try:
            with pytest.raises(nats.errors.TimeoutError):
                await api.jetstream().publish(
                    Subjects(ROOT_SUBJECT).for_event(certificate_event), certificate_event.to_wire(), timeout=1.0
                )
        finally:
            await api.close()
        assert any("permissions violation" in e.lower() for e in errors), errors
        async with _bus(auth_nats, Role.API, "AUTHZ") as api_bus:
            with pytest.raises(BusError):
                await api_bus.publish(certificate_event, timeout=1.0)
        assert await certify_bus.last_sequence() == 0  # nothing got onto the stream

        assert await certify_bus.publish(certificate_event) == 1  # the certifier may

    # No user, or a wrong password: no connection at all.
    for credentials in ({}, {"user": "certify", "password": "guess"}):
        with pytest.raises(nats.errors.Error):
            await nats.connect(auth_nats.url, allow_reconnect=False, max_reconnect_attempts=0, **credentials)


async def test_credentials_are_private_and_survive_a_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats", auth=LAYOUT)
    async with server:
        first = server.credentials()
    assert set(first) == {role.value for role in Role}
    for path in (server.credentials_path, server.config_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    async with server:
        assert server.credentials() == first
        settings = Settings(nats_url=server.url, nats_credentials_file=server.credentials_path)
        user, password = nats_credentials(settings, Role.COORDINATOR)
        nc = await nats.connect(server.url, user=user, password=password)
        await nc.close()


async def test_stack_up_on_embedded_servers_with_auth_certifies_a_run(tmp_path: Path) -> None:
    """`echelon stack up` with no URLs: embedded NATS with a user per role; a run still gets certified."""
    data_dir = tmp_path / "data"
    secret = "stack-auth-test-secret-0123456789abcdef"
    env = cli_env(ECHELON_DATA_DIR=str(data_dir), ECHELON_API_PORT="0", ECHELON_JWT_SECRET=secret)
    log_path = tmp_path / "stack.log"  # a file: a pipe nobody reads while the run goes would fill and block
    with log_path.open("wb") as log_file:
        stack = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "echelon.cli",
            "stack",
            "up",
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        await wait_for(lambda: (data_dir / "api.json").exists(), timeout=120, what="the stack's API")
        assert "authorization" in (data_dir / "nats" / "nats.conf").read_text()
        passwords = json.loads((data_dir / "nats" / "credentials.json").read_text())
        assert set(passwords) == {role.value for role in Role}
        args = ("verify", "sample", "--oracle-callable", "pipeline_workers.oracles.sample:summarise")
        result = await run_cli(*args, "--limit", "2", "--watch", cwd=tmp_path, env=env, timeout=120)
        assert result.code == 0, result.stdout + result.stderr
        assert "completed" in result.stdout.splitlines()
        assert any(line.startswith("content hash ") for line in result.stdout.splitlines())
        # Every role did its work without touching anything its user may not (the server logs each refusal).
        assert "Violation" not in (data_dir / "nats" / "nats.log").read_text()
        await _attack_with_the_api_password(data_dir / "nats")
    finally:
        if stack.returncode is None:
            stack.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(stack.wait(), 60)
        except TimeoutError:
            stack.kill()
            await stack.wait()
    text = log_path.read_text()
    assert "Permissions Violation" not in text and "Authorization Violation" not in text, text[-4000:]
    assert stack.returncode == 0, text[-4000:]


async def _attack_with_the_api_password(nats_dir: Path) -> None:
    """What an attacker holding the stack's `api` password tried (#18): all refused, the log stays whole."""
    port = re.search(r'listen: "127\.0\.0\.1:(\d+)"', (nats_dir / "nats.conf").read_text())
    assert port is not None
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    password = json.loads((nats_dir / "credentials.json").read_text())["api"]
    api = await nats.connect(f"nats://127.0.0.1:{port[1]}", user="api", password=password, error_cb=on_error)
    try:
        before = (await api.jetstream().stream_info("VERIFY")).state.last_seq
        evil = {"name": "EVIL", "subjects": ["_INBOX.evil.*"], "republish": {"src": ">", "dest": "verify.x"}}
        for subject, body in (
            ("$JS.API.STREAM.CREATE.EVIL", evil),
            ("$JS.API.STREAM.PURGE.VERIFY", {}),
            ("$JS.API.STREAM.DELETE.VERIFY", {}),
            ("$JS.API.CONSUMER.DELETE.VERIFY.echelon-ingest", {}),
            ("$JS.API.CONSUMER.MSG.NEXT.VERIFY.echelon-coordinator", {"batch": 10}),
        ):
            with pytest.raises(nats.errors.TimeoutError):
                await api.request(subject, json.dumps(body).encode(), timeout=0.3)
            await wait_for(lambda s=subject: any(s.lower() in e for e in errors), timeout=5, what=f"{subject} refused")
        assert (await api.jetstream().stream_info("VERIFY")).state.last_seq == before > 0
        assert (await api.jetstream().consumer_info("VERIFY", "echelon-ingest")).num_pending == 0
    finally:
        await api.close()
