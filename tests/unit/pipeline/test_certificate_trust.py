"""Signed certificates (Ed25519 over RFC 8785), key rotation, oracle identity and real calibration."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from echelon_platform.adapters.signing_keys import GENERATED_KEY, ROOT_PIN, load_keyring
from echelon_platform.config import Settings
from echelon_platform.domain.calibration import calibration_of
from echelon_platform.domain.certificate import content_hash, signature_ok, verify_certificate
from echelon_platform.domain.events import OracleSpec
from echelon_platform.domain.key_chain import Endorsement, trusted_key_ids
from echelon_platform.domain.values import CalibrationCertificate, OracleReply
from pipeline_workers.oracles.identity import oracle_identity
from pipeline_workers.scoring.base import claim_confidences
from tests.unit.pipeline.test_certify import build, score


def write_key(path: Path) -> Path:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(data_dir=tmp_path, **kw)  # type: ignore[arg-type]


def signed_cert(tmp_path: Path, **kw: object) -> CalibrationCertificate:
    return load_keyring(settings(tmp_path, **kw)).sign(build([score("r1"), score("r2", supported=0)]))


def test_a_signed_certificate_verifies_and_any_change_breaks_it(tmp_path: Path) -> None:
    keyring = load_keyring(settings(tmp_path))
    cert = keyring.sign(build([score("r1"), score("r2", supported=0)]))
    doc = cert.model_dump(mode="json")
    assert cert.schema_version == 2 and cert.signature is not None and cert.signature.key_id == keyring.key_id
    assert signature_ok(doc, keyring.public_keys())
    assert verify_certificate(cert) == (True, True)
    assert not signature_ok({**doc, "construct_id": "someone-else"}, keyring.public_keys())
    assert not signature_ok({**doc, "signature": None}, keyring.public_keys())
    assert not signature_ok(doc, load_keyring(settings(tmp_path / "other")).public_keys())  # another issuer


def test_the_generated_key_is_private_logged_once_and_reused(tmp_path: Path) -> None:
    first = load_keyring(settings(tmp_path))
    path = tmp_path / GENERATED_KEY
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_keyring(settings(tmp_path)).key_id == first.key_id


def test_rotation_signs_with_the_new_key_and_old_certificates_still_verify(tmp_path: Path) -> None:
    old_key, new_key = write_key(tmp_path / "old.pem"), write_key(tmp_path / "new.pem")
    old_cert = signed_cert(tmp_path, signing_key_file=old_key)
    rotated = load_keyring(settings(tmp_path, signing_key_file=new_key, signing_retired_key_files=[old_key]))
    new_cert = rotated.sign(build([score("r1")]))
    assert new_cert.signature is not None and old_cert.signature is not None
    assert new_cert.signature.key_id == rotated.key_id != old_cert.signature.key_id
    listed = rotated.well_known()["keys"]
    assert isinstance(listed, list)
    assert [(k["key_id"], k["retired"]) for k in listed] == [
        (rotated.key_id, False),
        (old_cert.signature.key_id, True),
    ]
    assert all(len(base64.urlsafe_b64decode(k["public_key"] + "=")) == 32 for k in listed)
    for cert in (old_cert, new_cert):
        assert signature_ok(cert.model_dump(mode="json"), rotated.public_keys())
    # Without the retired key listed, the old certificate no longer verifies: rotation needs it.
    alone = load_keyring(settings(tmp_path, signing_key_file=new_key))
    assert not signature_ok(old_cert.model_dump(mode="json"), alone.public_keys())


def test_content_hash_is_over_rfc_8785_and_schema_1_keeps_its_original_hash(tmp_path: Path) -> None:
    import hashlib

    from echelon_platform.domain.canonical import canonicalize

    cert = signed_cert(tmp_path)
    doc = cert.model_dump(mode="json")
    unsigned = {k: v for k, v in doc.items() if k not in ("content_hash", "signature")}
    assert cert.content_hash == hashlib.sha256(canonicalize(unsigned)).hexdigest()
    # A certificate issued before signing (schema 1, hash over orjson's sorted keys) still passes its hash check.
    import orjson

    legacy = build([score("r1")]).model_copy(update={"schema_version": 1, "calibration": None})
    legacy_doc = legacy.model_dump(
        mode="json", exclude={"content_hash", "oracle", "selection_policy", "calibration", "signature"}
    )
    for s in legacy_doc["individual_scores"]:
        s.pop("claim_supported"), s.pop("claim_confidences")
    legacy = legacy.model_copy(
        update={"content_hash": hashlib.sha256(orjson.dumps(legacy_doc, option=orjson.OPT_SORT_KEYS)).hexdigest()}
    )
    assert content_hash(legacy) == legacy.content_hash and verify_certificate(legacy)[0]


def test_python_oracle_identity_fingerprints_the_module_file() -> None:
    import hashlib

    import pipeline_workers.oracles.sample as sample

    spec = OracleSpec(type="python", module="pipeline_workers.oracles.sample", callable="summarise")
    identity = oracle_identity(spec)
    assert identity.target == "pipeline_workers.oracles.sample:summarise"
    assert identity.fingerprint == "sha256:" + hashlib.sha256(Path(sample.__file__).read_bytes()).hexdigest()
    http = oracle_identity(OracleSpec(type="http", url="https://oracle.example.com/v1"))
    assert (http.target, http.fingerprint) == ("https://oracle.example.com/v1", None)
    assert oracle_identity(OracleSpec(type="python", module="no.such.module", callable="f")).fingerprint is None


def calibrated(replay_id: str, flags: list[bool], confidences: list[float]) -> object:
    return score(replay_id, supported=sum(flags), claims=len(flags)).model_copy(
        update={"claim_supported": flags, "claim_confidences": confidences}
    )


def test_calibration_brier_reliability_and_ece_by_hand() -> None:
    scores = [
        calibrated("r1", [True, False, True], [0.9, 0.8, 0.35]),
        calibrated("r2", [False], [0.05]),
        calibrated("r3", [True, False], [0.82, 0.88]),
        score("r4"),  # no confidences: not part of calibration
    ]
    cal = calibration_of(scores)  # type: ignore[arg-type]
    assert cal is not None and cal.claims == 6
    # (0.1² + 0.8² + 0.65² + 0.05² + 0.18² + 0.88²) / 6 = 1.8818 / 6
    assert cal.brier_score == pytest.approx(0.313633, abs=1e-6)
    # bins 9: {0.9 ✓}; 8: {0.8 ✗, 0.82 ✓, 0.88 ✗} (conf 2.5/3, rate 1/3); 3: {0.35 ✓}; 0: {0.05 ✗}
    # ECE = (0.1 + 0.65 + 0.05) / 6 + 3/6 × |2.5/3 − 1/3| = 0.133333 + 0.25
    assert cal.expected_calibration_error == pytest.approx(0.383333, abs=1e-6)
    assert [b.count for b in cal.reliability] == [1, 0, 0, 1, 0, 0, 0, 0, 3, 1]
    eight = cal.reliability[8]
    assert (eight.lower, eight.upper, eight.mean_confidence, eight.supported_rate) == (0.8, 0.9, 0.833333, 0.333333)
    assert cal.reliability[1].mean_confidence is None

    cert = build(scores)  # type: ignore[arg-type]
    assert cert.calibration == cal and verify_certificate(cert) == (True, True)
    tampered = cert.model_copy(update={"calibration": cal.model_copy(update={"brier_score": 0.01})})
    tampered = tampered.model_copy(update={"content_hash": content_hash(tampered)})
    assert verify_certificate(tampered) == (True, False)  # the calibration must follow from the scores
    assert build([score("r1")]).calibration is None  # no confidences anywhere: no calibration block
    assert cert.brier == round((1 - cert.composite_score) / 2, 6)  # the legacy field is unchanged


def test_claim_confidences_are_taken_only_when_well_formed() -> None:
    def reply(conf: object) -> OracleReply:
        return OracleReply(
            summary="s", key_claims=["a", "b"], follow_up_response="r", metadata={"claim_confidences": conf}
        )

    assert claim_confidences(reply([0.25, 1])) == [0.25, 1.0]
    for bad in ([0.5], [0.5, 1.5], [0.5, "high"], [True, 0.5], "0.5", [0.5, float("nan")]):
        assert claim_confidences(reply(bad)) is None, bad


def test_the_first_keyring_pins_the_root_and_a_rotation_chains_to_it(tmp_path: Path) -> None:
    first = load_keyring(settings(tmp_path))
    pin = tmp_path / ROOT_PIN
    assert pin.read_text().strip() == first.key_id and stat.S_IMODE(os.stat(pin).st_mode) == 0o600
    new_key = write_key(tmp_path / "new.pem")
    rotated = load_keyring(
        settings(tmp_path, signing_key_file=new_key, signing_retired_key_files=[tmp_path / GENERATED_KEY])
    )
    assert rotated.root_key_id == first.key_id  # the pin stays: the new key chains to it
    keys = {k.key_id: k.public_key for k in rotated.published}
    assert trusted_key_ids(keys, rotated.endorsements, [first.key_id]) == {first.key_id, rotated.key_id}
    # Endorsed by no trusted key: a key of its own, with endorsements it made itself, stays out.
    rogue = load_keyring(settings(tmp_path / "rogue"))
    forged = [Endorsement(rogue.key_id, first.key_id, e.signature) for e in rogue.endorsements] + [
        Endorsement(rogue.key_id, rogue.key_id, b"\0" * 64)
    ]
    everything = {**keys, rogue.key_id: rogue.published[0].public_key}
    assert rogue.key_id not in trusted_key_ids(everything, [*rotated.endorsements, *forged], [first.key_id])
    # A row that names a trusted id with another public key is no key at all.
    assert trusted_key_ids({first.key_id: rogue.published[0].public_key}, [], [first.key_id]) == set()
