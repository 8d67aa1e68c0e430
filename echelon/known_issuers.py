"""Issuers' signing keys pinned on first use, like SSH's known_hosts, for `echelon certificates verify`.

One JSON file per user: `$ECHELON_KNOWN_ISSUERS_FILE`, else `$XDG_CONFIG_HOME/echelon/known_issuers.json`
(default `~/.config/echelon/`), mode 0600. The first verification against an issuer (a URL origin) records
the keys it publishes; later ones trust only those, plus keys a pinned key endorsed (a rotation), which are
pinned in turn. A key an issuer lists without such a chain is ignored: a forged certificate served with its
own `/.well-known` keys by whoever answers at that address verifies as INVALID.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from echelon_platform.adapters.key_files import write_private
from echelon_platform.domain.key_chain import Endorsement, fingerprint, trusted_key_ids
from echelon_platform.errors import EchelonError


def default_path() -> Path:
    explicit = os.environ.get("ECHELON_KNOWN_ISSUERS_FILE")
    if explicit:
        return Path(explicit)
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "echelon" / "known_issuers.json"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class TrustedKey:
    raw: bytes
    source: str  # said on every result line: "--keys FILE x", "pinned on DATE", "first use", ...


class KnownIssuers:
    """The pin file: issuer → key id → (public key, pinned_at)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, dict[str, str]]] = self._load()

    def _load(self) -> dict[str, dict[str, dict[str, str]]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise EchelonError(f"cannot read the pinned issuers in {self.path}: {exc}") from exc
        issuers = data.get("issuers") if isinstance(data, dict) else None
        if not isinstance(issuers, dict):
            raise EchelonError(f"{self.path} is not a known-issuers file (no 'issuers' object)")
        return issuers

    def pinned(self, issuer: str) -> dict[str, TrustedKey]:
        keys: dict[str, TrustedKey] = {}
        for key_id, entry in self._data.get(issuer, {}).items():
            try:
                raw = unb64url(entry["public_key"])
            except (KeyError, TypeError, ValueError, binascii.Error):
                continue
            if fingerprint(raw) == key_id:  # a hand-edited entry cannot smuggle another key in
                keys[key_id] = TrustedKey(raw, f"pinned on {str(entry.get('pinned_at', '?'))[:10]}")
        return keys

    def pin(self, issuer: str, keys: Mapping[str, bytes]) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        entries = self._data.setdefault(issuer, {})
        for key_id, raw in keys.items():
            entries.setdefault(key_id, {"public_key": b64url(raw), "pinned_at": now})
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.path, (json.dumps({"issuers": self._data}, indent=2, sort_keys=True) + "\n").encode())


def resolve(
    store: KnownIssuers, issuer: str, published: Mapping[str, bytes] | None, endorsements: list[Endorsement]
) -> tuple[dict[str, TrustedKey], list[str]]:
    """The keys to trust for issuer, and what to tell the user (stderr). `published`: what the issuer serves
    now (None: unreachable, the pins alone are used)."""
    notes: list[str] = []
    pinned = store.pinned(issuer)
    if not pinned:
        if published is None:
            raise EchelonError(
                f"could not read {issuer}/.well-known/echelon-keys.json and no keys of that issuer are pinned: "
                "reach the API (--api / ECHELON_API_BASE_URL) or give --keys FILE"
            )
        if not published:
            raise EchelonError(f"issuer {issuer} publishes no keys and none are pinned: give --keys FILE")
        store.pin(issuer, published)
        notes += [f"pinned issuer {issuer} key {key_id} (first use; {store.path})" for key_id in published]
        return {key_id: TrustedKey(raw, "first use") for key_id, raw in published.items()}, notes
    if published is None:
        return pinned, notes
    # A rotation: keys the issuer lists now that a pinned key endorsed, directly or through each other.
    candidates = {**published, **{key_id: key.raw for key_id, key in pinned.items()}}
    chained = trusted_key_ids(candidates, endorsements, pinned) - pinned.keys()
    fresh: dict[str, TrustedKey] = {}
    trusted = pinned.keys() | chained
    for key_id in sorted(chained):
        via = next(e.endorsed_by for e in endorsements if e.key_id == key_id and e.endorsed_by in trusted)
        fresh[key_id] = TrustedKey(candidates[key_id], f"chains from pinned key {via[:16]}")
        notes.append(f"pinned issuer {issuer} key {key_id} (endorsed by {via[:16]})")
    if fresh:
        store.pin(issuer, {key_id: key.raw for key_id, key in fresh.items()})
    for key_id in sorted(set(published) - set(pinned) - chained):
        notes.append(
            f"issuer {issuer} now lists key {key_id} that no pinned key endorsed: NOT trusted "
            f"(if the issuer really replaced its keys, check out of band, then remove it from {store.path})"
        )
    return {**pinned, **fresh}, notes


def endorsements_of(data: Any) -> list[Endorsement]:
    """The endorsements a well-known keys document carries (malformed entries are skipped)."""
    found: list[Endorsement] = []
    entries = data.get("keys") if isinstance(data, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("endorsements"), list):
            continue
        for item in entry["endorsements"]:
            try:
                found.append(Endorsement(str(entry["key_id"]), str(item["endorsed_by"]), unb64url(item["signature"])))
            except (KeyError, TypeError, ValueError, binascii.Error):
                continue
    return found
