"""Nothing private leaks over HTTP: stats count public data for anonymous callers, ratings are readable by
their author (and admins), request bodies and run fields are bounded."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.factories import requested
from tests.helpers import certifier_keyring
from tests.integration.test_api_support import (
    API,
    app,
    auth,
    certified_run,
    client,
    drain,
    http_client,
    options,
    publish,
)

__all__ = ["app", "client", "options"]  # fixtures

RUN: dict[str, Any] = {
    "repo_url": "https://github.com/acme/widgets",
    "construct_id": "oracle-a",
    "oracle_type": "python",
    "oracle_module": "pipeline_workers.oracles.sample",
    "oracle_callable": "summarise",
    "limit": 5,
}


async def test_stats_never_show_another_users_uncertified_run(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    """The bug: anonymous /stats listed the construct id of bob's private, never-certified run."""
    keyring = await certifier_keyring(services.store, settings)
    events, _ = certified_run("P1", user="alice", construct="public-oracle", keyring=keyring)
    await publish(services, [*events, requested("P2", "bob", "bobs-secret-oracle")])
    await drain(services, settings)

    def keys(body: dict[str, Any]) -> dict[str, int]:
        return {row["key"]: row["runs"] for row in body["rows"]}

    anonymous = await client.get(f"{API}/stats")
    assert anonymous.status_code == 200
    assert keys(anonymous.json()) == {"public-oracle": 1}
    assert "bobs-secret-oracle" not in anonymous.text
    alice = (await client.get(f"{API}/stats", headers=auth(settings, "alice"))).json()
    assert keys(alice) == {"public-oracle": 1}
    bob = (await client.get(f"{API}/stats", headers=auth(settings, "bob"))).json()
    assert keys(bob) == {"public-oracle": 1, "bobs-secret-oracle": 1}  # your own runs count for you
    admin = (await client.get(f"{API}/stats", headers=auth(settings, "root", admin=True))).json()
    assert keys(admin) == {"public-oracle": 1, "bobs-secret-oracle": 1}
    bad = await client.get(f"{API}/stats", headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 401  # credentials that are sent are checked, not ignored


async def test_ratings_are_readable_by_their_author_and_admins(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    """The bug: any signed-in user read anyone's ratings with `?user_id=`."""
    events, cert = certified_run("R1", user="alice", keyring=await certifier_keyring(services.store, settings))
    await publish(services, events)
    await drain(services, settings)
    path = f"{API}/certificates/{cert.certificate_id}/replays/R1-0000/ratings"
    alice, bob = auth(settings, "alice"), auth(settings, "bob")
    assert (await client.post(path, json={"rating": 2}, headers=alice)).status_code == 201
    assert (await client.post(path, json={"rating": 4}, headers=bob)).status_code == 201
    await drain(services, settings)

    def authors(response: httpx.Response) -> list[tuple[str, int]]:
        assert response.status_code == 200, response.text
        return [(r["user_id"], r["rating"]) for r in response.json()["ratings"]]

    peek = await client.get(f"{API}/ratings", params={"user_id": "bob"}, headers=alice)
    assert peek.status_code == 404 and "admins only" in peek.json()["detail"]
    assert authors(await client.get(f"{API}/ratings", headers=alice)) == [("alice", 2)]
    by_cert = await client.get(f"{API}/ratings", params={"certificate_id": cert.certificate_id}, headers=bob)
    assert authors(by_cert) == [("bob", 4)]
    assert authors(await client.get(f"{API}/ratings", params={"user_id": "alice"}, headers=alice)) == [("alice", 2)]
    admin = auth(settings, "root", admin=True)
    assert authors(await client.get(f"{API}/ratings", headers=admin)) == [("alice", 2), ("bob", 4)]
    assert authors(await client.get(f"{API}/ratings", params={"user_id": "bob"}, headers=admin)) == [("bob", 4)]


async def test_request_bodies_over_the_limit_get_413(settings: Settings, services: Services, options: Any) -> None:
    """The bug: no body limit; a megabyte of labels was parsed in full."""
    small = settings.model_copy(update={"max_body_bytes": 4096})
    app: FastAPI = create_app(small, services, options=options)
    alice = auth(settings, "alice")
    big = {**RUN, "labels": ["x" * 90] * 60}  # > 4 KiB of JSON
    async with http_client(app) as client:
        declared = await client.post(f"{API}/runs", json=big, headers=alice)
        assert declared.status_code == 413
        assert declared.json() == {"detail": "request body is larger than 4096 bytes"}

        async def chunks() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b" " * 1000

        streamed = await client.post(
            f"{API}/runs", content=chunks(), headers={**alice, "Content-Type": "application/json"}
        )
        assert streamed.status_code == 413 and "larger than 4096 bytes" in streamed.json()["detail"]
        assert (await client.post(f"{API}/runs", json=RUN, headers=alice)).status_code == 201


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("oracle_headers", {f"X-H{i}": "v" for i in range(21)}, "at most 20 items"),
        ("oracle_headers", {"X" * 129: "v"}, "at most 128 characters"),
        ("oracle_headers", {"Bad Name": "v"}, "match pattern"),
        ("oracle_headers", {"X-Key": "s" * 4097}, "'X-Key': value is longer than 4096 characters"),
        ("oracle_headers", {"X-Key": "a\r\nX-Injected: 1"}, "'X-Key': value has control characters"),
        ("labels", ["x" * 101], "at most 100 characters"),
        ("labels", [""], "at least 1 character"),
    ],
)
async def test_oracle_headers_and_labels_are_bounded(
    client: httpx.AsyncClient, settings: Settings, field: str, value: object, why: str
) -> None:
    """The bug: oracle_headers was unbounded, labels bounded in count but not in length."""
    body = {**RUN, "oracle_type": "http", "oracle_url": "https://oracle.example/summarise", field: value}
    body.pop("oracle_module"), body.pop("oracle_callable")
    response = await client.post(f"{API}/runs", json=body, headers=auth(settings, "alice"))
    assert response.status_code == 422
    messages = [issue["msg"] for issue in response.json()["detail"]]
    assert any(why in m for m in messages), messages
