"""Loads the versioned judge prompts and refuses templates that differ from their pinned hashes.

A certificate names its methodology version; that promise only holds if the text sent to the judge is
byte-for-byte the text that version released, so an edited template fails loudly instead of
silently changing what certificates mean.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Any

from echelon_platform.domain.methodology_hash import file_digest, methodology_hash
from echelon_platform.errors import ConfigError

METHODOLOGY_VERSION = "v1"
_PACKAGE = "pipeline_workers.prompts"


@dataclass(frozen=True)
class PromptSet:
    version: str
    templates: MappingProxyType[str, str]

    def render(self, name: str, **values: str) -> str:
        """Fill a template; every placeholder must be given and nothing else (catches typos both ways)."""
        try:
            template = self.templates[name]
        except KeyError as exc:
            raise ConfigError(f"prompt set {self.version} has no template {name!r}") from exc
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field}
        missing, extra = fields - values.keys(), values.keys() - fields
        if missing or extra:
            raise ValueError(
                f"template {name!r} needs {sorted(fields)}; missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
        return template.format(**values)


@cache
def load_prompts(version: str = METHODOLOGY_VERSION) -> PromptSet:
    """The packaged prompt set for ``version``, verified against its manifest (cached)."""
    root = resources.files(_PACKAGE).joinpath(version)
    return load_prompts_from(root, version)


def load_prompts_from(root: Traversable, version: str) -> PromptSet:
    """Load and verify a prompt directory (``manifest.json`` plus templates)."""
    try:
        manifest: Any = json.loads(root.joinpath("manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"prompt manifest for methodology {version} is missing or not JSON") from exc
    if not isinstance(manifest, dict) or manifest.get("version") != version:
        raise ConfigError(f"prompt manifest does not describe methodology {version}")
    entries = manifest.get("templates")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"prompt manifest for {version} lists no templates")
    templates: dict[str, str] = {}
    for entry in entries:
        name, file, expected = _entry(entry, version)
        try:
            data = root.joinpath(file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"prompt template {file} of methodology {version} is missing") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ConfigError(
                f"prompt template {file} of methodology {version} does not match its manifest hash "
                f"(expected {expected[:12]}…, got {actual[:12]}…): released prompts must not be edited; "
                "add a new methodology version instead"
            )
        templates[name] = data.decode("utf-8")
    return PromptSet(version=version, templates=MappingProxyType(templates))


def _entry(entry: object, version: str) -> tuple[str, str, str]:
    if isinstance(entry, dict):
        name, file, digest = entry.get("name"), entry.get("file"), entry.get("sha256")
        if isinstance(name, str) and isinstance(file, str) and isinstance(digest, str) and "/" not in file:
            return name, file, digest.lower()
    raise ConfigError(f"malformed template entry in the manifest of methodology {version}: {entry!r}")


@dataclass(frozen=True)
class Methodology:
    """A released methodology: every file of its directory, their hashes and the hash over them."""

    version: str
    sha256: str
    files: MappingProxyType[str, str]  # file name → SHA-256 hex
    contents: MappingProxyType[str, str]  # file name → text
    description: str


@cache
def load_methodology(version: str = METHODOLOGY_VERSION) -> Methodology:
    """The packaged methodology ``version`` (templates verified against the manifest first)."""
    load_prompts(version)  # refuses edited templates
    root = resources.files(_PACKAGE).joinpath(version)
    return methodology_from(root, version)


def methodology_from(root: Traversable, version: str) -> Methodology:
    files: dict[str, str] = {}
    contents: dict[str, str] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        # The methodology is its data files; Python package markers and caches are not part of it.
        if not entry.is_file() or entry.name.endswith((".py", ".pyc")) or entry.name.startswith("."):
            continue
        data = entry.read_bytes()
        files[entry.name] = file_digest(data)
        contents[entry.name] = data.decode("utf-8")
    manifest = json.loads(contents.get("manifest.json", "{}"))
    return Methodology(
        version=version,
        sha256=methodology_hash(files),
        files=MappingProxyType(files),
        contents=MappingProxyType(contents),
        description=str(manifest.get("description", "")),
    )
