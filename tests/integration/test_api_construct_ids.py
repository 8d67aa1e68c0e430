"""Construct ids are one identity per canonical form: other spellings of an owner's id (case, trailing
punctuation) neither pass the ownership check nor sit next to it on the leaderboard."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.values import canonical_construct_id, construct_key
from tests.factories import T0
from tests.helpers import certifier_keyring
from tests.integration.test_api_support import API, app, auth, certified_run, client, drain, options, publish

__all__ = ["app", "client", "options"]  # fixtures

RUN = {
    "repo_url": "https://github.com/acme/widgets",
    "oracle_type": "python",
    "oracle_module": "pipeline_workers.oracles.sample",
    "oracle_callable": "summarise",
    "limit": 5,
}


def test_one_canonical_form() -> None:
    for spelling in (
        "ALICE-ORACLE",
        "Alice-Oracle",
        "alice-oracle.",
        "alice-oracle/",
        " alice-oracle ",
        "alice--oracle",
    ):
        assert construct_key(spelling) == "alice-oracle", spelling
    assert construct_key("\uff21lice-oracle") == "alice-oracle"  # a full-width A (NFKC)
    assert canonical_construct_id("Org/Model:V2") == "org/model:v2" == construct_key("Org/Model:V2")
    for refused in ("alice-oracle.", "alice-oracle/", "-alice", "alice--oracle", "alice oracle", "\uff41", "a_b", ""):
        with pytest.raises(ValueError, match="construct_id must be"):
            canonical_construct_id(refused)


async def test_other_spellings_of_an_owned_construct_id_are_refused(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    """The bug: `ALICE-ORACLE`, `alice-oracle.` and `alice-oracle/` passed the ownership check of alice's id."""
    events, _ = certified_run(
        "OWN1", user="alice", construct="alice-oracle", keyring=await certifier_keyring(services.store, settings)
    )
    await publish(services, events)
    await drain(services, settings)
    mallory = auth(settings, "mallory")
    for spelling in ("ALICE-ORACLE", "Alice-Oracle"):
        refused = await client.post(f"{API}/runs", json={**RUN, "construct_id": spelling}, headers=mallory)
        assert refused.status_code == 403, (spelling, refused.text)
        assert "belongs to the user who first certified it" in refused.json()["detail"]
    for spelling in ("alice-oracle.", "alice-oracle/", "alice-oracle-", "alice--oracle"):
        refused = await client.post(f"{API}/runs", json={**RUN, "construct_id": spelling}, headers=mallory)
        assert refused.status_code == 422, (spelling, refused.text)
        assert "construct_id must be" in refused.text
    # The owner may use any case; the run records the canonical form.
    accepted = await client.post(
        f"{API}/runs", json={**RUN, "construct_id": "ALICE-Oracle"}, headers=auth(settings, "alice")
    )
    assert accepted.status_code == 201, accepted.text
    run = await client.get(f"{API}/runs/{accepted.json()['run_id']}", headers=auth(settings, "alice"))
    assert run.json()["construct_id"] == "alice-oracle"


async def test_spellings_logged_before_the_rule_are_one_construct(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    """Certificates already in the log under other spellings: one leaderboard row, one owner (the first)."""
    for n, (user, spelling) in enumerate(
        [("alice", "alice-oracle"), ("mallory", "ALICE-ORACLE"), ("mallory", "alice-oracle.")]
    ):
        keyring = await certifier_keyring(services.store, settings)
        events, _ = certified_run(
            f"LEG{n}", user=user, construct=spelling, issued=T0 + timedelta(minutes=n), keyring=keyring
        )
        await publish(services, events)
    await drain(services, settings)
    rows = (await client.get(f"{API}/stats")).json()["rows"]
    assert [(r["key"], r["certificates"]) for r in rows] == [("alice-oracle", 3)]
    listed = (await client.get(f"{API}/certificates", params={"construct_id": "Alice-Oracle"})).json()
    assert listed["total"] == 3
    refused = await client.post(
        f"{API}/runs", json={**RUN, "construct_id": "alice-oracle"}, headers=auth(settings, "mallory")
    )
    assert refused.status_code == 403, refused.text
