"""`GET /certificates/compare?a=…&b=…` on real servers: paired over the shared changes of one repository,
unpaired (and saying so) otherwise; public like the other certificate reads."""

from __future__ import annotations

from datetime import timedelta

import httpx

from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import load_keyring
from echelon_platform.config import Settings
from echelon_platform.domain.events import RunRequested, make_event, payload_as
from tests.factories import T0
from tests.integration.test_api_certificates import Certs, seeded
from tests.integration.test_api_support import API, app, certified_run, client, drain, options, publish

__all__ = ["app", "client", "options", "seeded"]  # fixtures
COMPARE = f"{API}/certificates/compare"


async def test_paired_over_the_changes_both_runs_scored(client: httpx.AsyncClient, seeded: Certs) -> None:
    # C1 scored change pr-0; C2 scored pr-0 and pr-1 (same repository): one shared change.
    response = await client.get(COMPARE, params={"a": "cert-C1", "b": "cert-C2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["paired"], body["shared_changes"], body["a_only"], body["b_only"]) == (True, 1, 0, 1)
    assert body["exact"] and body["permutations"] == 2 and "paired permutation test" in body["method"]
    precision = next(f for f in body["figures"] if f["figure"] == "precision")
    c1, c2 = seeded["cert-C1"]["individual_scores"][0], seeded["cert-C2"]["individual_scores"][0]
    assert (precision["a"], precision["b"]) == (c1["precision"], c2["precision"])
    assert precision["difference"] == round(c2["precision"] - c1["precision"], 6)
    assert precision["p_value"] == 1.0  # one pair: both sign patterns are as extreme
    assert body == (await client.get(COMPARE, params={"a": "cert-C1", "b": "cert-C2"})).json()  # reproducible


async def test_runs_over_different_repositories_are_compared_unpaired_and_say_so(
    client: httpx.AsyncClient, services: Services, settings: Settings, seeded: Certs
) -> None:
    events, cert = certified_run(
        "D1", construct="oracle-d", issued=T0 + timedelta(minutes=9), keyring=load_keyring(settings)
    )
    request = payload_as(events[0], RunRequested)
    events[0] = make_event(request.model_copy(update={"repo_url": "https://github.com/acme/gadgets"}))
    await publish(services, events)
    await drain(services, settings)
    response = await client.get(COMPARE, params={"a": "cert-C1", "b": cert.certificate_id})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["paired"] is False and body["shared_changes"] == 0 and body["method"].startswith("UNPAIRED")
    assert "different repositories" in body["note"]


async def test_compare_refuses_unknown_and_identical_certificates(client: httpx.AsyncClient, seeded: Certs) -> None:
    unknown = await client.get(COMPARE, params={"a": "cert-C1", "b": "cert-NOPE"})
    assert unknown.status_code == 404 and "cert-NOPE" in unknown.json()["detail"]
    same = await client.get(COMPARE, params={"a": "cert-C1", "b": "cert-C1"})
    assert same.status_code == 422 and "same certificate" in same.json()["detail"]
    missing = await client.get(COMPARE, params={"a": "cert-C1"})
    assert missing.status_code == 422
