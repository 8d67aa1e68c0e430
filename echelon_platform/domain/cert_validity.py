"""Is a certificate document genuine? One verdict, used by the API's `/verify` and `echelon certificates verify`.

The hash is recomputed from the document as published (schema 2: RFC 8785 of the JSON, so a field this
build does not know still counts), or, for schema 1, from the model as it was hashed then. The signature is
checked over the same published JSON against the keys given. The aggregates are recomputed from the stored
replay scores.

A newer issuer may add fields: a document whose only problem is fields this build does not know is still
read as a certificate (without them) and judged by its hash and signature, which cover every field; its
aggregates are recomputed as far as this build understands them, and reported, but do not decide (the
issuer may compute them in a way this build does not know).
"""

from __future__ import annotations

import copy
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from echelon_platform.domain.canonical import CanonicalJSONError
from echelon_platform.domain.certificate import content_hash, document_hash, signature_ok, verify_certificate
from echelon_platform.domain.repeats import spread_ok
from echelon_platform.domain.values import CalibrationCertificate


@dataclass(frozen=True)
class Validity:
    certificate: CalibrationCertificate | None  # None: the document is not a certificate
    hash_ok: bool
    aggregates_ok: bool
    signature_ok: bool
    problem: str | None = None  # why the document could not be read as a certificate
    unknown_fields: tuple[str, ...] = ()  # dotted paths of fields this build does not know

    @property
    def key_id(self) -> str | None:
        cert = self.certificate
        return cert.signature.key_id if cert is not None and cert.signature is not None else None

    @property
    def valid(self) -> bool:
        # With fields this build does not know, hash and signature decide (see the module docstring).
        return self.hash_ok and self.signature_ok and (self.aggregates_ok or bool(self.unknown_fields))


def verify(document: Mapping[str, object], public_keys: Mapping[str, bytes]) -> Validity:
    """Hash, aggregates and signature of a certificate document (the JSON as signed), against
    ``public_keys`` (key id → raw Ed25519 public key)."""
    unknown: list[tuple[str | int, ...]] = []
    try:
        cert = CalibrationCertificate.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors()
        unknown = [tuple(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
        if len(unknown) < len(errors):
            first = next(e for e in errors if e["type"] != "extra_forbidden")
            return Validity(None, False, False, False, problem=f"not a certificate ({first['msg']})")
        try:
            cert = CalibrationCertificate.model_validate(_without(document, unknown))
        except ValidationError as again:
            return Validity(None, False, False, False, problem=f"not a certificate ({again.errors()[0]['msg']})")
    try:
        recomputed = document_hash(document) if cert.schema_version >= 2 else content_hash(cert)
        hash_ok = hmac.compare_digest(str(document.get("content_hash", "")), recomputed)
    except CanonicalJSONError:
        hash_ok = False
    _, aggregates_ok = verify_certificate(cert)
    aggregates_ok = aggregates_ok and spread_ok(cert)  # a repeat spread follows from the scores too
    return Validity(
        cert,
        hash_ok,
        aggregates_ok,
        signature_ok(document, public_keys),
        unknown_fields=tuple(".".join(str(part) for part in loc) for loc in unknown),
    )


def _without(document: Mapping[str, object], paths: Sequence[tuple[str | int, ...]]) -> dict[str, object]:
    """A copy of ``document`` without the fields at ``paths`` (each a key/index path from pydantic)."""
    stripped: dict[str, object] = copy.deepcopy(dict(document))
    for path in paths:
        node: object = stripped
        for part in path[:-1]:
            node = node[part]  # type: ignore[index]
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return stripped
