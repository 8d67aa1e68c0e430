"""Certificates, the tamper check, ratings and stats, on real servers with events drained by the coordinator."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.certificates import VERDICTS
from echelon.cert_verify import check, parse_keys
from echelon.cli import main as cli_main
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import (
    GENERATED_KEY,
    ROOT_PIN,
    Keyring,
    PublishedKeys,
    load_keyring,
    publish_keys,
)
from echelon_platform.config import Settings
from echelon_platform.domain.key_chain import endorsement_message
from echelon_platform.errors import ConfigError
from tests.factories import T0
from tests.helpers import wait_for
from tests.integration.test_api_support import API, app, auth, certified_run, client, drain, options, publish
from tests.unit.pipeline.test_certificate_trust import write_key

__all__ = ["app", "client", "options"]  # fixtures

Certs = dict[str, dict[str, Any]]

# (run id, construct, replay score overrides, minutes after T0): composites and Briers all differ.
SEED: list[tuple[str, str, list[dict[str, object]], int]] = [
    ("C1", "oracle-a", [{"supported": 4, "accuracy": 1.0}], 1),
    ("C2", "oracle-b", [{"supported": 1, "accuracy": 0.5}, {"supported": 3, "accuracy": 0.75}], 2),
    ("C3", "oracle-a", [{"supported": 0, "surfaced": 1, "accuracy": 0.25}], 3),
    ("C4", "oracle-a", [{"supported": 3, "accuracy": 0.75, "model": "claude-sonnet-4-6", "tokens": (900, 100)}], 4),
]


@pytest.fixture
async def seeded(services: Services, settings: Settings) -> Certs:
    certs = {}
    # What the certify stage does at start: publish its public key for verifiers.
    await publish_keys(services.store, load_keyring(settings))
    for run_id, construct, scores, minutes in SEED:
        events, cert = certified_run(
            run_id,
            user="alice",
            construct=construct,
            scores=scores,
            issued=T0 + timedelta(minutes=minutes),
            keyring=load_keyring(settings),
        )
        await publish(services, events)
        certs[cert.certificate_id] = cert.model_dump(mode="json")
    await drain(services, settings)
    return certs


async def test_certificate_is_public_and_complete(client: httpx.AsyncClient, seeded: Certs) -> None:
    response = await client.get(f"{API}/certificates/cert-C2")
    assert response.status_code == 200
    body = response.json()
    stored = seeded["cert-C2"]
    assert body["id"] == "cert-C2" and body["run_id"] == "C2"
    assert body["commit_range"] == "abc123..def456"
    assert body["content_hash"] == stored["content_hash"] and len(body["content_hash"]) == 64
    assert (body["composite_score"], body["brier"]) == (stored["composite_score"], stored["brier"])
    first = body["replay_scores"][0]
    assert set(first) == {
        "id", "ground_truth_id", "precision", "recall", "reply_accuracy", "claims_total", "claims_supported",
        "changes_total", "changes_surfaced", "scoring_model", "scoring_latency_ms", "scored_at",
        "claim_supported", "claim_confidences", "repeat",
    }  # fmt: skip
    assert first["repeat"] is None  # a run without repeats
    assert [s["id"] for s in body["replay_scores"]] == ["C2-0000", "C2-0001"]
    assert first["claims_supported"] == 1 and first["precision"] == 0.25
    # n and a 95% interval per figure, as stored (and signed) in the certificate.
    assert body["uncertainty"] == stored["uncertainty"]
    assert body["uncertainty"]["composite_score"]["n"] == 2
    assert body["uncertainty"]["composite_score"]["low"] <= body["composite_score"]
    assert body["composite_score"] <= body["uncertainty"]["composite_score"]["high"]


async def test_unknown_certificate_is_404(client: httpx.AsyncClient) -> None:
    for path in ("/certificates/cert-NOPE", "/certificates/cert-NOPE/verify"):
        response = await client.get(API + path)
        assert response.status_code == 404 and "cert-NOPE" in response.json()["detail"]


async def test_listing_sorts_filters_and_pages_exactly(client: httpx.AsyncClient, seeded: Certs) -> None:
    async def ids(**params: Any) -> tuple[list[str], int]:
        body = (await client.get(f"{API}/certificates", params=params)).json()
        return [c["id"] for c in body["certificates"]], body["total"]

    by_created = sorted(seeded, key=lambda c: seeded[c]["timestamp"], reverse=True)
    by_brier = sorted(seeded, key=lambda c: (seeded[c]["brier"], c))
    by_composite = sorted(seeded, key=lambda c: seeded[c]["composite_score"], reverse=True)
    assert await ids() == (by_created, 4)
    assert await ids(sort="brier_asc") == (by_brier, 4)
    assert await ids(sort="composite_desc") == (by_composite, 4)
    assert await ids(sort="brier_asc", limit=2, offset=1) == (by_brier[1:3], 4)
    assert await ids(sort="brier_asc", limit=2, offset=4) == ([], 4)
    only_a = [c for c in by_created if seeded[c]["construct_id"] == "oracle-a"]
    assert await ids(construct_id="oracle-a") == (only_a, 3)
    assert await ids(construct_id="oracle-z") == ([], 0)
    summary = (await client.get(f"{API}/certificates", params={"limit": 1})).json()["certificates"][0]
    assert summary == {
        "id": "cert-C4", "run_id": "C4", "construct_id": "oracle-a", "domain": "community_oracle",
        "replay_count": 1, "composite_score": seeded["cert-C4"]["composite_score"],
        "brier": seeded["cert-C4"]["brier"], "scoring_model": "claude-sonnet-4-6", "partial": False,
        "created_at": "2026-11-01T12:04:00Z",
    }  # fmt: skip


async def test_listing_refuses_bad_parameters(client: httpx.AsyncClient) -> None:
    for params in ({"sort": "random"}, {"limit": 0}, {"limit": 101}, {"offset": -1}, {"construct_id": ""}):
        response = await client.get(f"{API}/certificates", params=params)
        assert response.status_code == 422, params
        assert isinstance(response.json()["detail"], list)


async def test_verify_detects_tampering(
    client: httpx.AsyncClient, services: Services, settings: Settings, seeded: Certs
) -> None:
    intact = (await client.get(f"{API}/certificates/cert-C1/verify")).json()
    assert intact == {
        "certificate_id": "cert-C1",
        "content_hash": seeded["cert-C1"]["content_hash"],
        "hash_ok": True,
        "aggregates_ok": True,
        "signature_ok": True,
        "key_id": load_keyring(settings).key_id,
        "valid": True,
    }
    # The verdict is remembered per certificate content: asking again checks nothing anew.
    checks = VERDICTS.checks
    assert (await client.get(f"{API}/certificates/cert-C1/verify")).json() == intact
    assert VERDICTS.checks == checks
    assert (await client.get(f"{API}/certificates/cert-C3/verify")).json()["valid"] is True
    # Someone with write access to Redis improves the score (the hash no longer matches): the altered copy is
    # checked afresh although it claims the content hash whose verdict is remembered ...
    keys = await services.read_models.keys()
    forged = {**seeded["cert-C3"], "composite_score": 0.99}
    await services.read_models.redis.set(keys.cert("cert-C3"), orjson.dumps(forged))
    result = (await client.get(f"{API}/certificates/cert-C3/verify")).json()
    assert (result["hash_ok"], result["aggregates_ok"], result["valid"]) == (False, False, False)
    # ... or also recomputes the hash: the aggregates still give it away.
    from echelon_platform.domain.certificate import content_hash
    from echelon_platform.domain.values import CalibrationCertificate

    rehashed = {**forged, "content_hash": content_hash(CalibrationCertificate.model_validate(forged))}
    await services.read_models.redis.set(keys.cert("cert-C3"), orjson.dumps(rehashed))
    result = (await client.get(f"{API}/certificates/cert-C3/verify")).json()
    assert (result["hash_ok"], result["aggregates_ok"], result["valid"]) == (True, False, False)
    assert result["signature_ok"] is False  # only the certifier's key can re-sign it


async def test_a_certificate_forged_on_the_bus_is_parked_and_never_public(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    # Consistent numbers and a right hash, but not signed by the certifier's key: the writer never logs it.
    await publish_keys(services.store, load_keyring(settings))
    events, cert = certified_run("FORGED", construct="oracle-f")
    await publish(services, events)
    await drain(services, settings)
    assert (await client.get(f"{API}/certificates/{cert.certificate_id}")).status_code == 404
    assert (await client.get(f"{API}/certificates/{cert.certificate_id}/verify")).status_code == 404
    [parked] = await services.store.parked()
    assert "unsigned certificate" in parked.reason


async def test_keys_are_published_and_the_cli_verifies_offline(
    client: httpx.AsyncClient, settings: Settings, seeded: Certs, tmp_path: Path
) -> None:
    keys = (await client.get("/.well-known/echelon-keys.json")).json()
    keyring = load_keyring(settings)
    assert [(k["key_id"], k["algorithm"], k["retired"]) for k in keys["keys"]] == [(keyring.key_id, "Ed25519", False)]
    document = (await client.get(f"{API}/certificates/cert-C2/document")).json()
    assert document == seeded["cert-C2"]
    # Offline: the document and the keys as files, nothing else.
    (tmp_path / "keys.json").write_text(orjson.dumps(keys).decode())
    valid, line = check(document, parse_keys(keys))
    assert valid and line.startswith("VALID cert-C2") and "signature ok" in line
    forged = {**document, "recall": 1.0}
    valid, line = check(forged, parse_keys(keys))
    assert not valid and "hash MISMATCH" in line and "aggregates MISMATCH" in line
    cert_file = tmp_path / "cert.json"
    for body, code in ((document, 0), (forged, 1)):
        cert_file.write_text(orjson.dumps(body).decode())
        with pytest.raises(SystemExit) as exited:
            # The CLI runs its own event loop: call it from a thread, as from a shell.
            await asyncio.to_thread(
                cli_main, ["certificates", "verify", str(cert_file), "--keys", str(tmp_path / "keys.json")]
            )
        assert exited.value.code == code


async def test_a_construct_belongs_to_its_first_certifier(
    client: httpx.AsyncClient, settings: Settings, seeded: Certs
) -> None:
    body = {
        "repo_url": "https://github.com/acme/widgets",
        "construct_id": "oracle-a",  # first certified by alice (seeded)
        "oracle_type": "python",
        "oracle_module": "pipeline_workers.oracles.sample",
        "oracle_callable": "summarise",
        "limit": 5,
    }
    refused = await client.post(f"{API}/runs", json=body, headers=auth(settings, "bob"))
    assert refused.status_code == 403 and "oracle-a" in refused.json()["detail"]
    assert (await client.post(f"{API}/runs", json=body, headers=auth(settings, "alice"))).status_code == 201
    fresh = await client.post(f"{API}/runs", json={**body, "construct_id": "bobs-own"}, headers=auth(settings, "bob"))
    assert fresh.status_code == 201


async def test_ratings_replace_per_user_and_list_with_filters(
    client: httpx.AsyncClient, services: Services, settings: Settings, seeded: Certs
) -> None:
    path = f"{API}/certificates/cert-C2/replays/C2-0001/ratings"
    alice, bob = auth(settings, "alice"), auth(settings, "bob")
    assert (await client.post(path, json={"rating": 3})).status_code == 401
    first = await client.post(path, json={"rating": 2}, headers=alice)
    assert first.status_code == 201
    accepted = first.json()
    assert (accepted["user_id"], accepted["rating"], accepted["replay_id"]) == ("alice", 2, "C2-0001")
    assert len(accepted["rating_id"]) == 26
    assert (await client.post(path, json={"rating": 5}, headers=alice)).status_code == 201
    assert (await client.post(path, json={"rating": 4}, headers=bob)).status_code == 201
    other = f"{API}/certificates/cert-C1/replays/C1-0000/ratings"
    assert (await client.post(other, json={"rating": 1}, headers=bob)).status_code == 201
    await drain(services, settings)

    def rows(body: dict[str, Any]) -> list[tuple[str, str, str, int]]:
        return [(r["certificate_id"], r["replay_id"], r["user_id"], r["rating"]) for r in body["ratings"]]

    admin = auth(settings, "root", admin=True)
    by_cert = (await client.get(f"{API}/ratings", params={"certificate_id": "cert-C2"}, headers=admin)).json()
    assert rows(by_cert) == [("cert-C2", "C2-0001", "alice", 5), ("cert-C2", "C2-0001", "bob", 4)]
    assert by_cert["total"] == 2
    by_user = (await client.get(f"{API}/ratings", params={"user_id": "bob"}, headers=admin)).json()
    assert rows(by_user) == [("cert-C1", "C1-0000", "bob", 1), ("cert-C2", "C2-0001", "bob", 4)]
    paged = (await client.get(f"{API}/ratings", params={"limit": 1, "offset": 2}, headers=admin)).json()
    assert rows(paged) == [("cert-C2", "C2-0001", "bob", 4)] and paged["total"] == 3
    assert (await client.get(f"{API}/ratings")).status_code == 401


async def test_rating_refuses_unknown_targets_and_bad_values(
    client: httpx.AsyncClient, settings: Settings, seeded: Certs
) -> None:
    alice = auth(settings, "alice")
    unknown_cert = await client.post(f"{API}/certificates/cert-X/replays/r/ratings", json={"rating": 3}, headers=alice)
    assert unknown_cert.status_code == 404
    unknown_replay = await client.post(
        f"{API}/certificates/cert-C1/replays/C2-0000/ratings", json={"rating": 3}, headers=alice
    )
    assert unknown_replay.status_code == 404 and "no scored replay C2-0000" in unknown_replay.json()["detail"]
    for body in ({"rating": 0}, {"rating": 6}, {"rating": "3"}, {"rating": 2.5}, {}, {"rating": 3, "x": 1}):
        path = f"{API}/certificates/cert-C1/replays/C1-0000/ratings"
        assert (await client.post(path, json=body, headers=alice)).status_code == 422, body


async def test_stats_group_and_measure_agreement(
    client: httpx.AsyncClient, services: Services, settings: Settings, seeded: Certs
) -> None:
    # C1's only replay: precision 1, recall .75, accuracy 1 → judge composite 0.916667.
    path = f"{API}/certificates/cert-C1/replays/C1-0000/ratings"
    await client.post(path, json={"rating": 5}, headers=auth(settings, "alice"))  # |1 - .916667| = .083333
    await client.post(path, json={"rating": 3}, headers=auth(settings, "bob"))  # |.5 - .916667| = .416667
    await drain(services, settings)
    body = (await client.get(f"{API}/stats")).json()
    assert body["group_by"] == "construct_id" and body["total"] == 2
    rows = {r["key"]: r for r in body["rows"]}
    a = rows["oracle-a"]
    assert (a["runs"], a["completed"], a["failed"], a["certificates"]) == (3, 3, 0, 3)
    composites = [seeded[c]["composite_score"] for c in ("cert-C1", "cert-C3", "cert-C4")]
    assert a["mean_composite"] == pytest.approx(sum(composites) / 3, abs=1e-6)
    assert a["best_brier"] == min(seeded[c]["brier"] for c in ("cert-C1", "cert-C3", "cert-C4"))
    assert (a["scored_replays"], a["mean_scoring_latency_ms"]) == (3, 10.0)
    assert (a["input_tokens"], a["output_tokens"], a["total_tokens"]) == (900, 100, 1000)
    assert a["human_ratings"] == 2 and a["human_judge_mae"] == pytest.approx(0.25, abs=1e-6)
    # judge step round(1 + 4 · .916667) = 5: rating 5 is within one step, 3 is not; one judged replay → ρ undefined
    assert a["human_within_one"] == 0.5 and a["human_spearman"] is None
    (per_judge,) = a["human_agreement"]
    assert per_judge["ratings"] == 2 and per_judge["within_one"] == 0.5
    assert per_judge["methodology_version"] == seeded["cert-C1"]["methodology_version"]
    assert rows["oracle-b"]["human_ratings"] == 0 and rows["oracle-b"]["human_judge_mae"] is None
    assert [r["key"] for r in body["rows"]] == sorted(rows, key=lambda k: -rows[k]["mean_composite"])
    by_model = (await client.get(f"{API}/stats", params={"group_by": "scoring_model"})).json()
    models = {r["key"]: (r["runs"], r["certificates"]) for r in by_model["rows"]}
    assert models == {"offline-lexical-v1": (3, 3), "claude-sonnet-4-6": (1, 1)}
    assert (await client.get(f"{API}/stats", params={"group_by": "user"})).status_code == 422


async def test_a_rotated_key_keeps_old_certificates_verifiable(
    client: httpx.AsyncClient, services: Services, settings: Settings, seeded: Certs, tmp_path: Path
) -> None:
    """A certify stage with a new key, endorsed by the old one, publishes it; the API (which holds no private
    key) lists both, and the new key's certificates verify."""
    old = load_keyring(settings)
    rotation = {
        "signing_key_file": write_key(tmp_path / "new.pem"),
        "signing_retired_key_files": [settings.data_dir / GENERATED_KEY],
    }
    new = load_keyring(settings.model_copy(update=rotation))
    await publish_keys(services.store, new)

    async def rotated() -> list[tuple[str, bool]] | None:
        keys = (await client.get("/.well-known/echelon-keys.json")).json()["keys"]
        listed = [(k["key_id"], k["retired"]) for k in keys]
        return listed if listed == [(new.key_id, False), (old.key_id, True)] else None

    await wait_for(rotated, timeout=30, what="the new key published, the old one retired")
    verdict = (await client.get(f"{API}/certificates/cert-C2/verify")).json()
    assert verdict["signature_ok"] and verdict["key_id"] == old.key_id
    events, cert = certified_run("ROTATED", construct="oracle-r", keyring=new)
    await publish(services, events)
    await drain(services, settings)
    verdict = (await client.get(f"{API}/certificates/{cert.certificate_id}/verify")).json()
    assert verdict["valid"] and verdict["key_id"] == new.key_id
    # A new key that no trusted key endorsed is refused at publication: its certificates could never verify.
    stray = load_keyring(settings.model_copy(update={"signing_key_file": write_key(tmp_path / "stray.pem")}))
    with pytest.raises(ConfigError, match="does not chain to the root key"):
        await publish_keys(services.store, stray)


async def test_a_key_written_into_the_table_alone_is_neither_served_nor_trusted(
    client: httpx.AsyncClient, services: Services, settings: Settings, seeded: Certs
) -> None:
    """What a local user with write access to Postgres tried: their own key, newest and active, with a
    forged "endorsement" by the genuine key, and a certificate signed with it written over a real one."""
    genuine = load_keyring(settings)
    rogue_key = Ed25519PrivateKey.generate()
    rogue = Keyring(rogue_key, T0, [])
    raw = rogue_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pool = services.store.pool
    await pool.execute("UPDATE signing_keys SET retired = true")
    await pool.execute("INSERT INTO signing_keys VALUES ($1, $2, now(), false)", rogue.key_id, raw)
    await pool.execute(
        "INSERT INTO signing_key_endorsements VALUES ($1, $2, $3)",
        rogue.key_id,
        genuine.key_id,
        rogue_key.sign(endorsement_message(rogue.key_id)),  # claims the genuine key signed it
    )
    listed = (await client.get("/.well-known/echelon-keys.json")).json()["keys"]
    assert [k["key_id"] for k in listed] == [genuine.key_id]
    # The certificate is consistent (hash, aggregates) and signed: only the key's chain gives it away.
    _events, forged = certified_run("C3", construct="oracle-a", keyring=rogue)
    keys = await services.read_models.keys()
    await services.read_models.redis.set(keys.cert("cert-C3"), orjson.dumps(forged.model_dump(mode="json")))
    verdict = (await client.get(f"{API}/certificates/cert-C3/verify")).json()
    assert (verdict["hash_ok"], verdict["aggregates_ok"], verdict["key_id"]) == (True, True, rogue.key_id)
    assert (verdict["signature_ok"], verdict["valid"]) == (False, False)
    # Nor can the rogue key take over the root's row: a key id must be its key's fingerprint.
    await pool.execute("UPDATE signing_keys SET public_key = $1 WHERE key_id = $2", raw, genuine.key_id)
    assert await PublishedKeys(services.store, settings).public_keys() == {}
    intact = (await client.get(f"{API}/certificates/cert-C1/verify")).json()
    assert intact["valid"]  # the API's keys as cached before the overwrite; fresh reads trust nothing now


async def test_no_key_is_trusted_before_the_root_is_pinned_and_the_pin_is_seen_at_once(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    api_side = settings.model_copy(update={"data_dir": tmp_path / "api"})  # where no certify stage ran yet
    keys = PublishedKeys(services.store, api_side)
    certifier = load_keyring(settings)
    await publish_keys(services.store, certifier)
    assert await keys.public_keys() == {}  # listed, but nothing pins a root here
    pinned = api_side.model_copy(update={"signing_root_key_id": certifier.key_id})
    assert list(await PublishedKeys(services.store, pinned).public_keys()) == [certifier.key_id]
    (tmp_path / "api" / ROOT_PIN).parent.mkdir(parents=True)
    (tmp_path / "api" / ROOT_PIN).write_text(certifier.key_id + "\n")
    assert list(await keys.public_keys()) == [certifier.key_id]  # an empty answer was not cached
