"""Request and response models of the HTTP API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from echelon_platform.domain.certificate import MAX_WEIGHT, WEIGHT_KEYS
from echelon_platform.domain.events import MAX_REPEATS
from echelon_platform.domain.lifecycle import Status
from echelon_platform.domain.values import ConstructId

MAX_ORACLE_HEADERS = 20
MAX_REPLAYS = 1000  # oracle calls per run (changes × repeats), as many as `limit` alone allows
MAX_HEADER_VALUE_CHARS = 4096
# An HTTP field name (RFC 9110 token), so a bad name is refused here and not when the invoke stage calls out.
HeaderName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
Label = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Weight = Annotated[float, Field(ge=0, le=MAX_WEIGHT)]
# No control characters but tab (no CR/LF injection); matched whole (`$` would let a final newline through).
_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
_STATUS_NAMES = [s.name for s in Status]
_STATUSES_EXPECTED = ", ".join(repr(n) for n in _STATUS_NAMES[:-1]) + f" or {_STATUS_NAMES[-1]!r}"


def _status_name(value: str) -> str:
    if value not in Status.__members__:  # the message a Literal of the names gives
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": _STATUSES_EXPECTED})
    return value


# A run status's name, from the lifecycle's enum (the schema lists them as a Literal would).
StatusName = Annotated[str, AfterValidator(_status_name), WithJsonSchema({"type": "string", "enum": _STATUS_NAMES})]


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    repo_url: str = Field(min_length=1, max_length=2048, description="https://github.com/owner/repo or a local path")
    construct_id: ConstructId = Field(
        min_length=1,
        max_length=128,
        description="your name for the oracle being certified (on the certificate): ASCII letters and digits, "
        "single . : / - only between them; compared and recorded in lower case",
    )
    oracle_type: Literal["http", "python"]
    oracle_url: str | None = Field(default=None, max_length=2048)
    oracle_module: str | None = Field(default=None, max_length=256)
    oracle_callable: str | None = Field(default=None, max_length=128)
    oracle_headers: dict[HeaderName, SecretStr] | None = Field(
        default=None,
        max_length=MAX_ORACLE_HEADERS,
        description=f"sent to an HTTP oracle; kept secret. At most {MAX_ORACLE_HEADERS} headers, names ≤ 128 "
        f"characters, values ≤ {MAX_HEADER_VALUE_CHARS} characters",
    )
    oracle_timeout_s: float = Field(default=30.0, gt=0, le=300)
    limit: int = Field(default=20, ge=1, le=1000)
    min_replays: int = Field(default=5, ge=1, le=500)
    github_token: SecretStr | None = None
    weights: dict[str, Weight] | None = Field(
        default=None,
        max_length=len(WEIGHT_KEYS),
        description=f"relative weights of {', '.join(WEIGHT_KEYS)} in the composite score (each 0 to "
        f"{MAX_WEIGHT:,.0f}, default 1; at least one positive)",
    )
    since: datetime | None = None
    labels: list[Label] = Field(default_factory=list, max_length=20, description="at most 20, each ≤ 100 characters")
    include_unmerged: bool = False
    repeats: int = Field(
        default=1,
        ge=1,
        le=MAX_REPEATS,
        description=f"oracle calls per change (1 to {MAX_REPEATS}): the certificate reports each figure's spread "
        f"over the repeats and uses the mean; `limit` × `repeats` is at most {MAX_REPLAYS}",
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="stop paying the judge when its next request could pass this many USD: the run ends with a "
        "certificate over what was scored (saying so), or FAILED when too little was",
    )
    judge_cache: bool = Field(
        default=True,
        description="reuse a judge answer the log already holds for exactly the same request (methodology, "
        "model, prompt) instead of paying for it again; false asks the judge every time",
    )

    @field_validator("oracle_headers")
    @classmethod
    def _header_values(cls, headers: dict[str, SecretStr] | None) -> dict[str, SecretStr] | None:
        # The message names the header, never its (secret) value.
        for name, value in (headers or {}).items():
            text = value.get_secret_value()
            if len(text) > MAX_HEADER_VALUE_CHARS:
                raise ValueError(f"oracle header {name!r}: value is longer than {MAX_HEADER_VALUE_CHARS} characters")
            if not _HEADER_VALUE.fullmatch(text):
                raise ValueError(f"oracle header {name!r}: value has control characters")
        return headers

    @model_validator(mode="after")
    def _oracle_fields(self) -> RunCreate:
        if self.oracle_type == "http" and not self.oracle_url:
            raise ValueError("oracle_type 'http' needs oracle_url")
        if self.oracle_type == "python" and not (self.oracle_module and self.oracle_callable):
            raise ValueError("oracle_type 'python' needs oracle_module and oracle_callable")
        if self.limit * self.repeats > MAX_REPLAYS:
            raise ValueError(
                f"limit × repeats is {self.limit * self.repeats}: at most {MAX_REPLAYS} oracle calls per run"
            )
        return self


class RunCreated(BaseModel):
    run_id: str
    status: str
    created_at: datetime


class RunView(BaseModel):
    run_id: str
    status: StatusName
    progress: int
    total: int | None
    construct_id: str | None
    repo_url: str | None
    error: str | None
    certificate_id: str | None
    created_at: datetime | None
    updated_at: datetime | None


class RunList(BaseModel):
    runs: list[RunView]
    total: int
    limit: int
    offset: int


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong and what to do about it")


class ValidationIssue(BaseModel):
    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """422: FastAPI's list of field errors, or one message for a rule that needs more than a schema."""

    detail: str | list[ValidationIssue]


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]


class NonceIssued(BaseModel):
    """A single-use nonce and what the EIP-4361 message must name to sign in here."""

    nonce: str
    expires_at: datetime = Field(description="use it (sign and send the message) before this time")
    domain: str = Field(description="the message's first line must name this domain")
    uri: str = Field(description="the message's `URI:` must have this origin")
    chain_ids: list[int] = Field(description="accepted `Chain ID:` values")
    version: Literal["1"] = "1"
