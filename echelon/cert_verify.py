"""`echelon certificates verify FILE|URL`: check a certificate offline with only the issuer's public keys.

The certificate is a JSON file or URL (the API's `/certificates/{id}/document`; a `/certificates/{id}` URL is
followed to its document). Keys come from `--keys FILE` (the `/.well-known/echelon-keys.json` format), or
from the issuer's keys pinned on first use (known_issuers.py): the issuer is the certificate URL's origin
(for a file: the configured API). Nothing else is trusted: the hash, the Ed25519 signature and the
aggregates are all recomputed here, and the result line names the key and where its trust came from.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from echelon.known_issuers import KnownIssuers, TrustedKey, default_path, endorsements_of, resolve
from echelon_platform.domain.cert_validity import verify
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


def load_document(where: str, http: httpx.Client, api_url: str = "") -> dict[str, Any]:
    document = _load_json(where, http)
    if isinstance(document, dict) and "replay_scores" in document:
        # The API's view (`GET /certificates/{id}`): renamed fields, no signature. What was signed is its
        # `/document`: fetched for a URL; for a saved file, say where to get it.
        if _is_url(where):
            return load_document(where.rstrip("/") + "/document", http)
        cert_id = document.get("id", "<id>")
        url = f"{api_url.rstrip('/') or '<api>'}/api/v1/verification/certificates/{cert_id}/document"
        raise EchelonError(
            f"{where} is the API's view of certificate {cert_id}, not the signed document: verify {url} "
            "(or save that and pass the file)"
        )
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


def issuer_of(where: str, api_url: str) -> str:
    """The origin that issued the certificate: the URL's, or for a file the configured API's."""
    parts = urlsplit(where if _is_url(where) else api_url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check(document: dict[str, Any], keys: Mapping[str, bytes | TrustedKey]) -> tuple[bool, str]:
    """(valid, one line saying what was checked, naming the key and where its trust came from)."""
    raw = {key_id: k.raw if isinstance(k, TrustedKey) else k for key_id, k in keys.items()}
    validity = verify(document, raw)
    cert = validity.certificate
    if cert is None:
        return False, f"INVALID: {validity.problem}"
    hash_ok, aggregates_ok, signed = validity.hash_ok, validity.aggregates_ok, validity.signature_ok
    key_id = cert.signature.key_id if cert.signature else None
    trusted = keys.get(key_id) if key_id else None
    source = trusted.source if isinstance(trusted, TrustedKey) else "given" if trusted else "not a trusted key"
    key = f"key {key_id[:16]}, {source}" if key_id else None
    parts = [
        "hash ok" if hash_ok else "hash MISMATCH",
        (f"signature ok ({key})" if signed else f"signature INVALID ({key})") if key else "UNSIGNED",
        "aggregates ok" if aggregates_ok else "aggregates MISMATCH",
    ]
    if validity.unknown_fields:  # a newer issuer's fields: covered by hash and signature, which decide
        parts.append(f"fields this version does not know: {', '.join(validity.unknown_fields[:5])}")
    valid = validity.valid
    return valid, f"{'VALID' if valid else 'INVALID'} {cert.certificate_id} ({cert.construct_id}): {', '.join(parts)}"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def verify_command(
    where: str,
    keys_file: str | None,
    api_url: str,
    *,
    known_issuers: Path | None = None,
    say: Callable[[str], None] = _stderr,
) -> tuple[bool, str]:
    """Verify the certificate at where; notes (first-use pins, ignored keys) go to say."""
    if keys_file is not None and _is_url(keys_file):
        raise EchelonError("--keys takes a file you obtained from the issuer over a channel you trust, not a URL")
    with httpx.Client(timeout=30.0, follow_redirects=False, trust_env=False) as http:
        document = load_document(where, http, api_url)
        if keys_file is not None:
            source = f"--keys FILE {keys_file}"
            keys = {key_id: TrustedKey(raw, source) for key_id, raw in parse_keys(_load_json(keys_file, http)).items()}
            return check(document, keys)
        issuer = issuer_of(where, api_url)
        try:
            served = _load_json(issuer + WELL_KNOWN, http)
            published: dict[str, bytes] | None = parse_keys(served)
        except (httpx.HTTPError, EchelonError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            say(f"could not read the issuer's keys at {issuer}{WELL_KNOWN} ({reason}); using the pinned keys only")
            served, published = None, None
    trusted, notes = resolve(KnownIssuers(known_issuers or default_path()), issuer, published, endorsements_of(served))
    for note in notes:
        say(note)
    return check(document, trusted)
