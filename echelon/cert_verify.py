"""`echelon certificates verify FILE|URL`: check a certificate offline with only the issuer's public keys.

The certificate is a JSON file or URL (the API's `/certificates/{id}/document`; a `/certificates/{id}` URL is
followed to its document). Keys come from `--keys FILE|URL` (the `/.well-known/echelon-keys.json` format) or,
by default, from the certificate URL's origin (for a file: the configured API). Fetched once; nothing else
is trusted: the hash, the Ed25519 signature and the aggregates are all recomputed here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from echelon_platform.domain.certificate import content_hash, document_hash, signature_ok, verify_certificate
from echelon_platform.domain.values import CalibrationCertificate
from echelon_platform.errors import EchelonError

WELL_KNOWN = "/.well-known/echelon-keys.json"


def _is_url(where: str) -> bool:
    return where.startswith(("http://", "https://"))


def _load_json(where: str, http: httpx.Client) -> Any:
    if _is_url(where):
        response = http.get(where)
        if response.status_code != 200:
            raise EchelonError(f"GET {where} answered HTTP {response.status_code}")
        return response.json()
    try:
        return json.loads(Path(where).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise EchelonError(f"{where} is not JSON: {exc}") from exc


def load_document(where: str, http: httpx.Client) -> dict[str, Any]:
    document = _load_json(where, http)
    if isinstance(document, dict) and "replay_scores" in document and _is_url(where):
        document = _load_json(where.rstrip("/") + "/document", http)  # the API's view: fetch what was signed
    if not isinstance(document, dict):
        raise EchelonError(f"{where} does not hold a certificate object")
    return document


def parse_keys(data: Any) -> dict[str, bytes]:
    """key id → raw public key from a well-known keys document; ids must be the keys' fingerprints."""
    keys: dict[str, bytes] = {}
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise EchelonError("the keys document has no 'keys' list")
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("algorithm") != "Ed25519":
            continue
        try:
            text = str(entry["public_key"])
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (KeyError, ValueError, binascii.Error):
            continue
        if len(raw) == 32 and hashlib.sha256(raw).hexdigest() == entry.get("key_id"):
            keys[str(entry["key_id"])] = raw
    return keys


def default_keys_location(where: str, api_url: str) -> str:
    base = api_url
    if _is_url(where):
        parts = urlsplit(where)
        base = f"{parts.scheme}://{parts.netloc}"
    return base.rstrip("/") + WELL_KNOWN


def check(document: dict[str, Any], keys: dict[str, bytes]) -> tuple[bool, str]:
    """(valid, one line saying what was checked)."""
    try:
        cert = CalibrationCertificate.model_validate(document)
    except ValidationError as exc:
        return False, f"INVALID: not a certificate ({exc.errors()[0]['msg']})"
    stored = str(document.get("content_hash", ""))
    recomputed = document_hash(document) if cert.schema_version >= 2 else content_hash(cert)
    hash_ok = hmac.compare_digest(stored, recomputed)
    _, aggregates_ok = verify_certificate(cert)
    signed = signature_ok(document, keys)
    key = cert.signature.key_id[:16] if cert.signature else None
    parts = [
        "hash ok" if hash_ok else "hash MISMATCH",
        (f"signature ok (key {key})" if signed else f"signature INVALID (key {key})") if key else "UNSIGNED",
        "aggregates ok" if aggregates_ok else "aggregates MISMATCH",
    ]
    valid = hash_ok and signed and aggregates_ok
    return valid, f"{'VALID' if valid else 'INVALID'} {cert.certificate_id} ({cert.construct_id}): {', '.join(parts)}"


def verify_command(where: str, keys_location: str | None, api_url: str) -> tuple[bool, str]:
    with httpx.Client(timeout=30.0, follow_redirects=False, trust_env=False) as http:
        document = load_document(where, http)
        keys = parse_keys(_load_json(keys_location or default_keys_location(where, api_url), http))
    return check(document, keys)
