"""Request and response models of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo_url: str = Field(min_length=1, max_length=2048, description="https://github.com/owner/repo or a local path")
    construct_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    oracle_type: Literal["http", "python"]
    oracle_url: str | None = Field(default=None, max_length=2048)
    oracle_module: str | None = Field(default=None, max_length=256)
    oracle_callable: str | None = Field(default=None, max_length=128)
    oracle_headers: dict[str, SecretStr] | None = Field(default=None, description="sent to an HTTP oracle; kept secret")
    oracle_timeout_s: float = Field(default=30.0, gt=0, le=300)
    limit: int = Field(default=20, ge=1, le=1000)
    min_replays: int = Field(default=5, ge=1, le=500)
    github_token: SecretStr | None = None
    weights: dict[str, float] | None = None
    since: datetime | None = None
    labels: list[str] = Field(default_factory=list, max_length=20)
    include_unmerged: bool = False

    @model_validator(mode="after")
    def _oracle_fields(self) -> RunCreate:
        if self.oracle_type == "http" and not self.oracle_url:
            raise ValueError("oracle_type 'http' needs oracle_url")
        if self.oracle_type == "python" and not (self.oracle_module and self.oracle_callable):
            raise ValueError("oracle_type 'python' needs oracle_module and oracle_callable")
        return self


class RunCreated(BaseModel):
    run_id: str
    status: str
    created_at: datetime


class RunView(BaseModel):
    run_id: str
    status: Literal["PENDING", "INGESTING", "INVOKING", "SCORING", "CERTIFYING", "COMPLETED", "FAILED"]
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
