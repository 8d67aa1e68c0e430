"""The writer's pure admission rules: subjects, natural dedup keys, per-topic size limits, certificates."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from echelon_platform.adapters.signing_keys import Keyring
from echelon_platform.domain.admission import MAX_EVENT_BYTES, _fast_content, certificate_refusal, check_event
from echelon_platform.domain.certificate import signature_ok, signed_content
from echelon_platform.domain.events import TOPICS, RunIngesting, Subjects, make_event, parse_payload
from echelon_platform.domain.partitions import Partitioning
from echelon_platform.errors import EnvelopeError
from tests.factories import certificate

PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEYRING = Keyring(PRIVATE, datetime(2026, 1, 1, tzinfo=UTC), [])


def test_every_topic_has_a_size_limit_above_a_typical_event() -> None:
    assert set(MAX_EVENT_BYTES) == set(TOPICS)
    assert min(MAX_EVENT_BYTES.values()) >= 16 * 1024
    assert MAX_EVENT_BYTES["verify.replay.invoked"] >= 1024 * 1024  # oracle replies up to NATS's max_payload


@pytest.mark.parametrize("partitions", [1, 4])
def test_an_event_travels_on_its_own_subject_with_its_natural_key(partitions: int) -> None:
    subjects = Subjects("verify", Partitioning(partitions))
    event = make_event(RunIngesting(run_id="RUNA", source="github"))
    payload = parse_payload(event)
    check_event(subjects.for_event(event), 300, event, payload, subjects)  # admitted
    with pytest.raises(EnvelopeError, match="its subject is"):
        check_event(subjects.subject(event.topic, "RUNB"), 300, event, payload, subjects)
    with pytest.raises(EnvelopeError, match="its subject is"):
        check_event(subjects.subject("verify.run.requested", "RUNA"), 300, event, payload, subjects)
    rekeyed = event.model_copy(update={"dedup_key": "verify.certificate.issued:RUNA"})
    with pytest.raises(EnvelopeError, match="not the event's natural key"):
        check_event(subjects.for_event(event), 300, rekeyed, payload, subjects)
    with pytest.raises(EnvelopeError, match="over the topic's limit"):
        check_event(subjects.for_event(event), MAX_EVENT_BYTES[event.topic] + 1, event, payload, subjects)


def test_only_a_certificate_signed_by_a_published_key_with_its_hash_right_is_genuine() -> None:
    keys = KEYRING.public_keys()
    genuine = KEYRING.sign(certificate("RUN1")).model_dump(mode="json")
    assert certificate_refusal(genuine, keys) is None
    assert "unsigned" in str(certificate_refusal(certificate("RUN1").model_dump(mode="json"), keys))
    stranger = Keyring(Ed25519PrivateKey.generate(), datetime(2026, 1, 1, tzinfo=UTC), [])
    by_stranger = stranger.sign(certificate("RUN1")).model_dump(mode="json")
    assert "not a published signing key" in str(certificate_refusal(by_stranger, keys))
    assert "does not verify" in str(certificate_refusal({**genuine, "composite_score": 1.0}, keys))
    assert "content_hash" in str(certificate_refusal({**genuine, "content_hash": "0" * 64}, keys))
    other_algorithm = {**genuine, "signature": {**genuine["signature"], "algorithm": "RS256"}}
    assert "not Ed25519" in str(certificate_refusal(other_algorithm, keys))


@pytest.mark.parametrize("awkward", [1e21, 1e-7, -1.0, 123456789.125, 5e-324, 2.0**60])
def test_the_fast_path_agrees_with_rfc_8785_or_defers_to_it(awkward: float) -> None:
    """Numbers whose orjson form may differ from RFC 8785's: the exact form decides, the verdict is the same."""
    keys = KEYRING.public_keys()
    signed = _signed({**certificate("RUN1").model_dump(mode="json"), "extra_number": awkward})
    assert signature_ok(signed, keys)
    assert certificate_refusal(signed, keys) is None
    assert certificate_refusal({**signed, "extra_number": 0.5}, keys) is not None


def test_the_exact_form_is_used_where_orjson_differs() -> None:
    signed = _signed({**certificate("RUN1").model_dump(mode="json"), "extra_number": 2.0**60})
    assert _fast_content(signed) != signed_content(signed)  # orjson 1.15…e+18, RFC 8785 1152921504606847000
    assert certificate_refusal(signed, KEYRING.public_keys()) is None


def _signed(document: dict[str, object]) -> dict[str, object]:
    """Sign any JSON document as the certifier signs a certificate (signature and hash over RFC 8785)."""
    content = signed_content(document)
    value = base64.urlsafe_b64encode(PRIVATE.sign(content)).rstrip(b"=").decode()
    signature = {"algorithm": "Ed25519", "key_id": KEYRING.key_id, "value": value}
    return {**document, "signature": signature, "content_hash": hashlib.sha256(content).hexdigest()}
