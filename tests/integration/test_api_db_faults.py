"""Keyed POSTs while the API's Postgres connections are terminated: a 503 with Retry-After (nothing published),
never a 500. A new Idempotency-Key is looked up in the log, so every request of this test reads Postgres."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import httpx

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.integration.test_api_idempotency import requested_in_stream
from tests.integration.test_api_runs import RUN
from tests.integration.test_api_support import API, app, auth, client, options

__all__ = ["app", "client", "options"]  # fixtures

TERMINATE = (
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


async def terminate_backends(database_url: str, done: asyncio.Event) -> int:
    """Terminate every other connection to the test's database, again and again, until `done`."""
    killed = 0
    conn = await asyncpg.connect(database_url)
    try:
        while not done.is_set():
            killed += int(await conn.fetchval(TERMINATE))
            # The fault's cadence (not a wait for an effect): a few ms, so kills land mid-query too.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.003)
    finally:
        await conn.close()
    return killed


async def test_keyed_posts_during_backend_terminations_answer_503_never_500(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    alice = auth(settings, "alice")
    done = asyncio.Event()
    killer = asyncio.create_task(terminate_backends(str(settings.database_url), done))
    answers: dict[str, httpx.Response] = {}

    async def post(key: str) -> None:
        answers[key] = await client.post(f"{API}/runs", json=RUN, headers={**alice, "Idempotency-Key": key})

    try:
        for batch in range(40):
            await asyncio.gather(*(post(f"key-{batch}-{i}") for i in range(4)))
    finally:
        done.set()
        killed = await killer
    assert killed > 0, "no connection was terminated: the test exercised nothing"
    codes = {key: r.status_code for key, r in answers.items()}
    assert set(codes.values()) <= {201, 503}, {k: (r.status_code, r.text) for k, r in answers.items()}
    unavailable = [key for key, code in codes.items() if code == 503]
    for key in unavailable:
        assert answers[key].headers.get("Retry-After") == "1", answers[key].headers
    # Nothing was published for a 503: the stream holds the 201s only, and retrying a 503's key now starts
    # its run for the first time (201, not the 200 of a key whose run exists).
    assert await requested_in_stream(services) == len(codes) - len(unavailable)
    for key in unavailable:
        again = await client.post(f"{API}/runs", json=RUN, headers={**alice, "Idempotency-Key": key})
        assert again.status_code == 201, again.text
