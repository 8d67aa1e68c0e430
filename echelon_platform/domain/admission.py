"""What the single writer admits into the log beyond a well-formed event: pure rules, no I/O.

A valid envelope is not enough. The writer also parks (with one of these reasons) an event that
- travels on another subject than its own (another run's, topic's or partition's): the subject is what
  NATS permissions and consumers go by, so it must say what the envelope says;
- carries a dedup key other than its topic's natural key: it could take the place of another event
  (e.g. a run's one certificate) in the log;
- is larger than its topic's limit (`MAX_EVENT_BYTES`);
- is a certificate not signed by a published key, or whose content hash is wrong.
Rules that need the log (unknown runs, a watchdog decision overtaken by progress) live with the writer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from echelon_platform.domain.certificate import signature_ok, signed_content
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import (
    TOPICS,
    CertificateIssued,
    JudgeCalled,
    JudgeStarted,
    MethodologyRegistered,
    Payload,
    RatingSubmitted,
    ReplayFailed,
    ReplayInvoked,
    ReplayRequested,
    ReplayScored,
    RunCertifying,
    RunCompleted,
    RunFailed,
    RunIngested,
    RunIngesting,
    RunRequested,
    Subjects,
)
from echelon_platform.errors import EnvelopeError

KIB = 1024
MIB = 1024 * KIB
# The largest envelope (wire bytes) the writer logs per topic. Generous where content is large by nature
# (diffs, oracle replies, judge answers, methodology texts, a certificate's per-replay scores: those are
# bounded by NATS's max_payload and by their stages); tight where a payload is a few fields.
MAX_EVENT_BYTES: dict[str, int] = {
    RunRequested.TOPIC: 64 * KIB,
    RunIngesting.TOPIC: 16 * KIB,
    RunIngested.TOPIC: 64 * KIB,
    ReplayRequested.TOPIC: 16 * MIB,
    ReplayInvoked.TOPIC: 16 * MIB,
    ReplayScored.TOPIC: 256 * KIB,
    ReplayFailed.TOPIC: 64 * KIB,
    RunCertifying.TOPIC: 16 * KIB,
    CertificateIssued.TOPIC: 16 * MIB,
    RunCompleted.TOPIC: 16 * KIB,
    RunFailed.TOPIC: 64 * KIB,
    RatingSubmitted.TOPIC: 16 * KIB,
    JudgeCalled.TOPIC: 1 * MIB,
    JudgeStarted.TOPIC: 16 * KIB,
    MethodologyRegistered.TOPIC: 16 * MIB,
}


def natural_dedup_key(envelope: Envelope, payload: Payload) -> str:
    """`<topic>:<natural key>`, as `make_event` builds it."""
    spec = TOPICS[envelope.topic]
    return f"{spec.topic}:{getattr(payload, spec.key_field)}"


def check_event(subject: str, size: int, envelope: Envelope, payload: Payload, subjects: Subjects) -> None:
    """EnvelopeError (the reason it is parked) unless a valid event may be logged as it travelled."""
    limit = MAX_EVENT_BYTES.get(envelope.topic)
    if limit is not None and size > limit:
        raise EnvelopeError(f"{envelope.topic} of {size} bytes is over the topic's limit of {limit} bytes")
    expected = subjects.for_event(envelope)
    if subject != expected:
        raise EnvelopeError(
            f"{envelope.topic} of run {envelope.run_id} published on {subject}; its subject is {expected}"
        )
    key = natural_dedup_key(envelope, payload)
    if envelope.dedup_key != key:
        raise EnvelopeError(f"dedup key {envelope.dedup_key[:120]!r} is not the event's natural key {key!r}")


def certificate_key_id(document: Mapping[str, object]) -> str | None:
    sig = document.get("signature")
    return str(sig.get("key_id")) if isinstance(sig, Mapping) else None


def certificate_refusal(document: Mapping[str, object], keys: Mapping[str, bytes]) -> str | None:
    """Why a certificate (its JSON document) must not be logged or shown, or None when it is genuine:
    signed with Ed25519 by one of `keys` (key id → raw public key) over its content, with the right hash."""
    sig = document.get("signature")
    if not isinstance(sig, Mapping):
        return "unsigned certificate: only the certify stage's signed certificates are logged"
    if sig.get("algorithm") != "Ed25519":
        return f"certificate signature algorithm {str(sig.get('algorithm'))[:40]!r} is not Ed25519"
    key_id = str(sig.get("key_id"))
    key = keys.get(key_id)
    if key is None:
        return f"certificate signed by key {key_id[:64]!r}, which is not a published signing key"
    content = _fast_content(document)
    if content is None or not _verifies(key, sig, content):
        # orjson's sorted form equals RFC 8785 for nearly every certificate, and is far cheaper; when it
        # differs, the exact (slow) form decides. A signature over the fast bytes proves they are the
        # signed bytes, so the shortcut never admits what the exact check would refuse.
        if not signature_ok(document, {key_id: key}):
            return f"certificate signature by key {key_id[:64]!r} does not verify over its content"
        content = signed_content(document)
    if not hmac.compare_digest(str(document.get("content_hash")), hashlib.sha256(content).hexdigest()):
        return "certificate content_hash does not match its content"
    return None


def _fast_content(document: Mapping[str, object]) -> bytes | None:
    try:
        body = {k: _integral(v) for k, v in document.items() if k not in ("content_hash", "signature")}
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return None


def _integral(value: object) -> object:
    """RFC 8785 writes a whole double without a fraction (1.0 → 1); orjson keeps it (1.0)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _verifies(key: bytes, sig: Mapping[str, object], content: bytes) -> bool:
    try:
        value = str(sig.get("value", ""))
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        Ed25519PublicKey.from_public_bytes(key).verify(raw, content)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True
