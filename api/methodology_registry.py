"""The methodology registry: which prompt sets, rubrics and parsing conventions certificates were scored
with, each a version with a SHA-256 over its files. Read from the event log (`verify.methodology.registered`,
correlation `run-methodology`); the certify stage registers the version it uses, an admin may register more."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api import responses as r
from api.deps import LogReaderDep, PublisherDep, SettingsDep, UserDep
from api.schemas import ErrorBody
from echelon_platform.domain.envelope import utcnow
from echelon_platform.domain.events import METHODOLOGY_RUN_ID, MethodologyRegistered, payload_as
from echelon_platform.domain.methodology_hash import MAX_FILES, check_file_name, file_digest, methodology_hash
from echelon_platform.errors import Forbidden, NotFound, RequestRejected
from echelon_platform.ports.log import LogReader

router = APIRouter(prefix="/api/v1/methodology", tags=["methodology"])
Version = Annotated[str, Path(pattern=r"^v[0-9]+(\.[0-9]+)*$", max_length=32)]
FORBIDDEN: r.Responses = {403: {"model": ErrorBody, "description": "Only admins register methodologies"}}


class MethodologySummary(BaseModel):
    version: str
    sha256: str = Field(description="SHA-256 over `<sha256>  <file>` lines of its files, sorted by name")
    description: str
    registered_by: str
    registered_at: datetime


class MethodologyDetail(MethodologySummary):
    files: dict[str, str] = Field(description="file name → SHA-256 of its bytes")
    contents: dict[str, str] = Field(description="file name → text")


class MethodologyIndex(BaseModel):
    current: str = Field(description="The version the stages score with (ECHELON_METHODOLOGY_VERSION)")
    current_registered: MethodologySummary | None = Field(
        description="Its registration, once the certify stage (or an admin) registered it"
    )
    history: list[MethodologySummary] = Field(description="Every registered version, oldest first")


class MethodologyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=r"^v[0-9]+(\.[0-9]+)*$", max_length=32)
    description: str = Field(default="", max_length=2000)
    files: dict[str, str] = Field(min_length=1, max_length=MAX_FILES, description="file name → text")


async def registered(log_reader: LogReader) -> list[MethodologyRegistered]:
    """Registrations in log order (the log keeps one per version: the first)."""
    events = await log_reader.run_events(METHODOLOGY_RUN_ID, [MethodologyRegistered.TOPIC])
    return [payload_as(e, MethodologyRegistered) for e in events]


def _summary(m: MethodologyRegistered) -> MethodologySummary:
    return MethodologySummary(**m.model_dump(include=set(MethodologySummary.model_fields)))


@router.get("", response_model=MethodologyIndex, responses=r.PUBLIC)
async def index(log_reader: LogReaderDep, settings: SettingsDep) -> MethodologyIndex:
    """The current methodology and every registered one."""
    history = await registered(log_reader)
    current = next((m for m in history if m.version == settings.methodology_version), None)
    return MethodologyIndex(
        current=settings.methodology_version,
        current_registered=_summary(current) if current else None,
        history=[_summary(m) for m in history],
    )


@router.get("/{version}", response_model=MethodologyDetail, responses=r.merge(r.PUBLIC, r.NOT_FOUND))
async def detail(version: Version, log_reader: LogReaderDep) -> MethodologyDetail:
    """One registered version with its files' hashes and text."""
    for m in await registered(log_reader):
        if m.version == version:
            return MethodologyDetail(**m.model_dump(exclude={"run_id"}))
    raise NotFound(f"methodology {version} is not registered")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=MethodologyDetail,
    responses=r.merge(r.PROTECTED, r.MALFORMED_BODY, FORBIDDEN),
)
async def register(
    body: MethodologyCreate,
    user: UserDep,
    log_reader: LogReaderDep,
    publish: PublisherDep,
    response: Response,
) -> Any:
    """Register a methodology version (admins only). The hash is computed here from the files sent. A
    version is registered once: the same files again answer 200, other files for it 422."""
    if not user.is_admin:
        raise Forbidden("only admins register methodologies")
    files = {check_file_name(name): file_digest(text.encode("utf-8")) for name, text in body.files.items()}
    digest = methodology_hash(files)
    for m in await registered(log_reader):
        if m.version == body.version:
            if m.sha256 != digest:
                raise RequestRejected(
                    f"methodology {body.version} is registered with another hash ({m.sha256[:12]}…): "
                    "a released version never changes; register a new version"
                )
            response.status_code = status.HTTP_200_OK
            return MethodologyDetail(**m.model_dump(exclude={"run_id"}))
    payload = MethodologyRegistered(
        run_id=METHODOLOGY_RUN_ID,
        version=body.version,
        sha256=digest,
        files=files,
        contents=dict(body.files),
        description=body.description,
        registered_by=user.user_id,
        registered_at=utcnow(),
    )
    await publish(payload)
    return MethodologyDetail(**payload.model_dump(exclude={"run_id"}))
