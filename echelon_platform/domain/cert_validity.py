"""Is a certificate document genuine? One verdict, used by the API's `/verify` and `echelon certificates verify`.

The hash is recomputed from the document as published (schema 2: RFC 8785 of the JSON, so a field this
build does not know still counts), or, for schema 1, from the model as it was hashed then. The aggregates
are recomputed from the stored replay scores; the signature is checked against the keys given.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from echelon_platform.domain.canonical import CanonicalJSONError
from echelon_platform.domain.certificate import content_hash, document_hash, signature_ok, verify_certificate
from echelon_platform.domain.values import CalibrationCertificate


@dataclass(frozen=True)
class Validity:
    certificate: CalibrationCertificate | None  # None: the document is not a certificate
    hash_ok: bool
    aggregates_ok: bool
    signature_ok: bool
    problem: str | None = None  # why the document could not be read as a certificate

    @property
    def key_id(self) -> str | None:
        cert = self.certificate
        return cert.signature.key_id if cert is not None and cert.signature is not None else None

    @property
    def valid(self) -> bool:
        return self.hash_ok and self.aggregates_ok and self.signature_ok


def verify(document: Mapping[str, object], public_keys: Mapping[str, bytes]) -> Validity:
    """Hash, aggregates and signature of a certificate document (the JSON as signed), against
    ``public_keys`` (key id → raw Ed25519 public key)."""
    try:
        cert = CalibrationCertificate.model_validate(document)
    except ValidationError as exc:
        return Validity(None, False, False, False, problem=f"not a certificate ({exc.errors()[0]['msg']})")
    try:
        recomputed = document_hash(document) if cert.schema_version >= 2 else content_hash(cert)
        hash_ok = hmac.compare_digest(str(document.get("content_hash", "")), recomputed)
    except CanonicalJSONError:
        hash_ok = False
    _, aggregates_ok = verify_certificate(cert)
    return Validity(cert, hash_ok, aggregates_ok, signature_ok(document, public_keys))
