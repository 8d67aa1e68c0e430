"""The event envelope and its single wire boundary (JSON via orjson / pydantic-core)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from echelon_platform.domain.ids import new_ulid
from echelon_platform.errors import EnvelopeError

SCHEMA_VERSION = 1


def new_event_id() -> str:
    """A ULID: unique and lexicographically sortable by creation time."""
    return new_ulid()


def correlation_for(run_id: str) -> str:
    return f"run-{run_id}"


def run_id_of(correlation_id: str) -> str:
    return correlation_id.removeprefix("run-")


class Envelope(BaseModel):
    """One event. Frozen and strict: nothing is coerced, unknown fields are refused."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)

    event_id: str = Field(min_length=26, max_length=26)
    timestamp: AwareDatetime  # a naive time is ambiguous and cannot be ordered against others
    topic: str = Field(pattern=r"^verify(\.[a-z_]+){2}$")
    correlation_id: str = Field(pattern=r"^run-[0-9A-Za-z_-]{1,64}$")
    causation_id: str | None = None
    payload: dict[str, Any]
    version: int = Field(ge=1)
    dedup_key: str = Field(min_length=1, max_length=300)

    @property
    def run_id(self) -> str:
        return run_id_of(self.correlation_id)

    def to_wire(self) -> bytes:
        return orjson.dumps(self.model_dump(by_alias=True))

    @classmethod
    def from_wire(cls, raw: bytes | str) -> Envelope:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise EnvelopeError(f"malformed envelope: {where}: {first['msg']}") from exc


def utcnow() -> datetime:
    return datetime.now(UTC)
