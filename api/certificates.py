"""Certificates (public), their tamper check, and people's ratings of single replays."""

from __future__ import annotations

import asyncio
import functools
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status
from ulid import ULID

from api import responses as r
from api.cert_schemas import (
    CertificateList,
    CertificateSummary,
    CertificateView,
    CertSort,
    PublicKeys,
    RatingAccepted,
    RatingCreate,
    RatingList,
    RatingView,
    VerifyResult,
)
from api.deps import ApiKeysDep, CertificateSourceDep, LogReaderDep, OptionsDep, PublisherDep, ReadModelsDep, UserDep
from api.log_reads import NOT_LEVEL, not_level
from api.verdict_cache import VerdictCache, verdict_key
from echelon_platform.adapters.signing_keys import PublishedKeys
from echelon_platform.domain.cert_validity import verify as verify_document
from echelon_platform.domain.certificate import composite_with
from echelon_platform.domain.compare import Comparison, compare
from echelon_platform.domain.envelope import utcnow
from echelon_platform.domain.events import RatingSubmitted, RunRequested, payload_as
from echelon_platform.errors import Forbidden, NotFound, RequestRejected, StoreError
from echelon_platform.ports.log import LogReader

router = APIRouter(prefix="/api/v1/verification", tags=["certificates"])
VERDICTS = VerdictCache()  # per API process
well_known = APIRouter(tags=["certificates"])

CertId = Annotated[str, Path(min_length=1, max_length=128, description="e.g. `cert-<run id>`")]
ReplayId = Annotated[str, Path(min_length=1, max_length=128)]
MAX_OFFSET = 1_000_000


@router.get("/certificates", response_model=CertificateList, responses=r.PUBLIC)
async def list_certificates(
    read_models: ReadModelsDep,
    construct_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    sort: Annotated[CertSort, Query(description="ties are broken by certificate id")] = "created_desc",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> CertificateList:
    """Public: certificate summaries, newest first (or by Brier score / composite); `total` is the filtered count."""
    certs, total = await read_models.list_certificates(construct_id=construct_id, sort=sort, limit=limit, offset=offset)
    return CertificateList(
        certificates=[CertificateSummary.of(c) for c in certs], total=total, limit=limit, offset=offset
    )


@router.get(
    "/certificates/compare",
    response_model=Comparison,
    responses=r.merge(r.PUBLIC, r.NOT_FOUND, r.INVALID, NOT_LEVEL),
)
async def compare_certificates(
    certificates: CertificateSourceDep,
    log_reader: LogReaderDep,
    a: Annotated[str, Query(min_length=1, max_length=128, description="Certificate A (the baseline)")],
    b: Annotated[str, Query(min_length=1, max_length=128, description="Certificate B (compared with A)")],
) -> Comparison:
    """Public: is B better than A? Per figure, B − A over the ground-truth changes both runs scored (same
    repository), with a 95% paired bootstrap interval and a paired permutation test; when the runs share no
    change, an unpaired comparison that says so (`paired: false`, `note`). See `method`."""
    if a == b:
        raise RequestRejected("a and b name the same certificate: compare two different certificates")
    cert_a, cert_b = await certificates.load(a), await certificates.load(b)
    repo_a, repo_b = await _repository(log_reader, cert_a.run_id), await _repository(log_reader, cert_b.run_id)
    same = repo_a is not None and repo_a == repo_b and cert_a.ground_truth_source == cert_b.ground_truth_source
    composite_a, composite_b = composite_with(cert_a.weights), composite_with(cert_b.weights)
    # A few thousand resamples: seconds of CPU for large runs, kept off the event loop.
    return await asyncio.to_thread(compare, cert_a, cert_b, composite_a, composite_b, same_repository=same)


async def _repository(log_reader: LogReader, run_id: str) -> str | None:
    """The repository a run's changes came from (its request), normalised; None when the log lacks it."""
    try:
        events = await log_reader.run_events(run_id, [RunRequested.TOPIC])
    except StoreError as exc:
        raise not_level(exc) from exc
    if not events:
        return None
    url = payload_as(events[0], RunRequested).repo_url.strip().lower().rstrip("/")
    return url.removesuffix(".git")


@router.get(
    "/certificates/{cert_id}", response_model=CertificateView, responses=r.merge(r.PUBLIC, r.NOT_FOUND, NOT_LEVEL)
)
async def get_certificate(cert_id: CertId, certificates: CertificateSourceDep) -> CertificateView:
    """Public: the full certificate with every replay's score, the commit range and the content hash."""
    return CertificateView.of(await certificates.load(cert_id))


@router.get("/certificates/{cert_id}/document", responses=r.merge(r.PUBLIC, r.NOT_FOUND, NOT_LEVEL))
async def get_certificate_document(cert_id: CertId, certificates: CertificateSourceDep) -> dict[str, object]:
    """Public: the certificate exactly as signed (the JSON `echelon certificates verify` checks offline)."""
    return (await certificates.load(cert_id)).model_dump(mode="json")


@router.get(
    "/certificates/{cert_id}/verify", response_model=VerifyResult, responses=r.merge(r.PUBLIC, r.NOT_FOUND, NOT_LEVEL)
)
async def verify(cert_id: CertId, certificates: CertificateSourceDep, request: Request) -> VerifyResult:
    """Public tamper check: recompute the content hash and the aggregates from the stored replay scores, and
    check the Ed25519 signature against the published keys whose chain reaches the pinned root key (only the
    certify stage holds the private key)."""
    cert = await certificates.load(cert_id)
    keys: PublishedKeys = request.app.state.signing_keys
    document, public_keys = cert.model_dump(mode="json"), await keys.public_keys()
    # Recomputing the intervals is a thousand resamples of the replays: once per certificate, off the loop.
    validity = await VERDICTS.verdict(
        verdict_key(document, public_keys), functools.partial(verify_document, document, public_keys)
    )
    return VerifyResult(
        certificate_id=cert.certificate_id,
        content_hash=cert.content_hash,
        hash_ok=validity.hash_ok,
        aggregates_ok=validity.aggregates_ok,
        signature_ok=validity.signature_ok,
        key_id=validity.key_id,
        valid=validity.valid,
    )


@well_known.get("/.well-known/echelon-keys.json", response_model=PublicKeys, responses=r.PUBLIC)
async def signing_keys(request: Request) -> dict[str, object]:
    """Public: the Ed25519 keys certificates are signed with, the active one first, retired ones after. Only
    keys whose endorsement chain reaches the issuer's pinned root key are listed."""
    keys: PublishedKeys = request.app.state.signing_keys
    return await keys.well_known()


def check_construct_owner(owner: str | None, construct_id: str, user_id: str, *, admin: bool) -> None:
    """403 unless ``user_id`` owns ``construct_id`` (``owner``; None: nobody yet): the first to certify owns it."""
    if owner is not None and owner != user_id and not admin:
        raise Forbidden(
            f"construct_id {construct_id!r} belongs to the user who first certified it: choose another construct_id"
        )


@router.post(
    "/certificates/{cert_id}/replays/{replay_id}/ratings",
    status_code=status.HTTP_201_CREATED,
    response_model=RatingAccepted,
    responses=r.merge(r.PROTECTED, r.MALFORMED_BODY, r.NOT_FOUND, r.RATE_LIMITED),
)
async def rate_replay(
    cert_id: CertId,
    replay_id: ReplayId,
    body: RatingCreate,
    user: UserDep,
    certificates: CertificateSourceDep,
    publish: PublisherDep,
    api_keys: ApiKeysDep,
    options: OptionsDep,
) -> RatingAccepted:
    """Rate how well the judge scored one replay (1–5). One rating per person per replay: a new one replaces
    the old. 201 means the rating event is stored; the read model follows within milliseconds."""
    cert = await certificates.load(cert_id)
    if all(s.replay_id != replay_id for s in cert.individual_scores):
        raise NotFound(f"certificate {cert_id} has no scored replay {replay_id}")
    limiter = api_keys.rate_limiter(limit=options.ratings_per_minute, window_s=60)
    await limiter.hit("ratings", user.user_id)
    payload = RatingSubmitted(
        run_id=cert.run_id,
        rating_id=str(ULID()),
        certificate_id=cert.certificate_id,
        replay_id=replay_id,
        user_id=user.user_id,
        rating=body.rating,
        rated_at=utcnow(),
    )
    await publish(payload)
    return RatingAccepted(**payload.model_dump(exclude={"run_id"}))


@router.get("/ratings", response_model=RatingList, responses=r.merge(r.PROTECTED, r.NOT_FOUND))
async def list_ratings(
    user: UserDep,
    read_models: ReadModelsDep,
    certificate_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    user_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> RatingList:
    """The latest rating per person per replay, ordered by certificate, replay, user. Your own ratings only
    (admins: anyone's, filtered by `user_id`): ratings name their authors."""
    if not user.is_admin:
        if user_id is not None and user_id != user.user_id:
            raise NotFound("ratings of another user are visible to admins only")
        user_id = user.user_id
    rows = await read_models.ratings(certificate_id=certificate_id, user_id=user_id)
    page = [RatingView.model_validate(row) for row in rows[offset : offset + limit]]
    return RatingList(ratings=page, total=len(rows), limit=limit, offset=offset)
