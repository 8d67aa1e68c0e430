"""Shared fixtures and builders for the API tests (no tests here): the app on real NATS/Postgres/Redis,
an in-process HTTP client, a real uvicorn server, tokens, wallet proofs and realistic certificate events."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import uvicorn
from eth_account import Account
from eth_account.messages import encode_defunct
from fastapi import FastAPI

from api.app import create_app
from api.auth import issue_jwt
from api.options import ApiOptions
from coordinator.assembly import coordinator_for
from echelon_platform.adapters.api_keys import ApiKeys
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import Keyring
from echelon_platform.config import Settings
from echelon_platform.domain.certificate import build_certificate
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    CertificateIssued,
    ReplayRequested,
    ReplayScored,
    RunCompleted,
    RunIngested,
    make_event,
)
from echelon_platform.domain.repeats import with_provenance
from echelon_platform.domain.values import CalibrationCertificate, ReplayScore
from tests.factories import T0, record, requested
from tests.helpers import wait_for

API = "/api/v1/verification"


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def http_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as client:
        yield client


@pytest.fixture
def options() -> ApiOptions:
    return ApiOptions(runs_per_minute=1000, ratings_per_minute=1000)


@pytest.fixture
def app(settings: Settings, services: Services, options: ApiOptions) -> FastAPI:
    return create_app(settings, services, options=options)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(app) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serve(app: FastAPI, port: int | None = None) -> AsyncIterator[str]:
    """A real uvicorn server for the app on `port` (default: a free one), in this event loop; yields its
    address (host:port)."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), timeout=10, what="uvicorn to start")
        assert not task.done(), "uvicorn exited at start-up"
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


def auth(settings: Settings, user: str, *, admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(settings, user, admin=admin)}"}


def token(settings: Settings, user: str, *, admin: bool = False) -> str:
    return issue_jwt(user, settings.jwt_secret.get_secret_value(), admin=admin)


def wallet_message(
    settings: Settings,
    address: str,
    nonce: str,
    *,
    issued: datetime | None = None,
    domain: str | None = None,
    uri: str | None = None,
    chain_id: int = 1,
    extra: str = "",
) -> str:
    """An EIP-4361 message bound to this service (override `domain`, `uri`, `chain_id` to break it)."""
    when = (issued or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    return (
        f"{domain or settings.siwe_expected_domain()} wants you to sign in with your Ethereum account:\n{address}\n\n"
        f"Sign in to echelon-verify.\n\nURI: {uri or settings.siwe_expected_uri()}\nVersion: 1\n"
        f"Chain ID: {chain_id}\nNonce: {nonce}\nIssued At: {when}{extra}"
    )


async def server_nonce(services: Services, settings: Settings) -> str:
    """A nonce issued the way GET /api/v1/auth/nonce issues one (for tests that have no HTTP client)."""
    return await ApiKeys(services.read_models).nonces(settings.siwe_nonce_ttl_s).issue()


async def fresh_message(client: httpx.AsyncClient, settings: Settings, account: object) -> str:
    nonce = (await client.get("/api/v1/auth/nonce")).json()["nonce"]
    return wallet_message(settings, account.address, nonce)  # type: ignore[attr-defined]


def sign(account: object, message: str) -> str:
    signed = account.sign_message(encode_defunct(text=message))  # type: ignore[attr-defined]
    return "0x" + bytes(signed.signature).hex()


def wallet_headers(account: object, message: str, *, signer: object | None = None) -> dict[str, str]:
    return {
        "X-Wallet-Address": account.address,  # type: ignore[attr-defined]
        "X-Wallet-Message": base64.b64encode(message.encode()).decode(),
        "X-Wallet-Signature": sign(signer or account, message),
    }


async def signed_in(client: httpx.AsyncClient, settings: Settings, account: object) -> dict[str, str]:
    """Headers of one fresh sign-in: a server nonce, a message bound to this service, a real signature."""
    return wallet_headers(account, await fresh_message(client, settings, account))


def new_account() -> object:
    return Account.create()


async def publish(services: Services, events: Sequence[Envelope]) -> list[int]:
    return [await services.bus.publish(e) for e in events]


async def drain(services: Services, settings: Settings) -> None:
    async with coordinator_for(services, settings) as coordinator:
        await coordinator.run(until_idle=True)


def replay_score(
    replay_id: str,
    i: int,
    *,
    supported: int = 2,
    claims: int = 4,
    surfaced: int = 3,
    changes: int = 4,
    accuracy: float = 1.0,
    model: str = "offline-lexical-v1",
    latency_ms: float = 10.0,
    tokens: tuple[int, int] = (0, 0),
    cost: float = 0.0,
) -> ReplayScore:
    return ReplayScore(
        replay_id=replay_id,
        ground_truth_id=f"pr-{i}",
        precision=supported / claims,
        recall=surfaced / changes,
        reply_accuracy=accuracy,
        claims_total=claims,
        claims_supported=supported,
        changes_total=changes,
        changes_surfaced=surfaced,
        scoring_model=model,
        scoring_latency_ms=latency_ms,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost_usd=cost,
        scored_at=T0 + timedelta(minutes=i),
    )


def certified_run(
    run_id: str,
    *,
    user: str = "alice",
    construct: str = "oracle-a",
    scores: Sequence[dict[str, object]] = ({},),
    issued: datetime = T0,
    keyring: Keyring | None = None,
    rescored_from: str | None = None,
) -> tuple[list[Envelope], CalibrationCertificate]:
    """A whole run's events, ending in its certificate (built by the real certifier) and completion;
    `rescored_from`: the run is a rescore of that certificate."""
    events = [requested(run_id, user, construct)]
    replay_scores = []
    for i, overrides in enumerate(scores):
        rid = f"{run_id}-{i:04d}"
        s = replay_score(rid, i, **overrides)  # type: ignore[arg-type]
        replay_scores.append(s)
        events.append(make_event(ReplayRequested(run_id=run_id, replay_id=rid, index=i, record=record(i))))
        events.append(make_event(ReplayScored(run_id=run_id, replay_id=rid, score=s)))
    events.append(
        make_event(
            RunIngested(run_id=run_id, total=len(scores), ground_truth_source="github", commit_range="abc123..def456")
        )
    )
    cert = build_certificate(
        run_id=run_id,
        construct_id=construct,
        scores=replay_scores,
        failed=[],
        weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
        min_replays=1,
        ground_truth_source="github",
        commit_range="abc123..def456",
        methodology_version="v1",
        timestamp=issued,
    )
    cert = with_provenance(cert, repeats=None, rescored_from=rescored_from)
    if keyring is not None:
        cert = keyring.sign(cert)
    events.append(make_event(CertificateIssued(run_id=run_id, certificate=cert)))
    events.append(make_event(RunCompleted(run_id=run_id, certificate_id=cert.certificate_id)))
    return events, cert
