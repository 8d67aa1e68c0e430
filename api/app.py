"""The FastAPI application: lifespan-built resources, one error mapping, health and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api import certificates, methodology_registry, readiness, rescore, run_events, runs, signin, stats, stream
from api.auth import TokenCache
from api.cors import OriginPolicy
from api.dashboard import install_dashboard
from api.deps import SECURITY_REQUIREMENT, SECURITY_SCHEMES
from api.direct import DirectRoutes
from api.docs_assets import install_docs
from api.edge import Edge
from api.fanout import PendingSockets
from api.options import ApiOptions
from api.publishing import Publisher
from api.schemas import Readiness
from api.sources import CertificateSource, RunSource
from api.validation_errors import validation_error_answer
from echelon_platform.adapters.api_keys import ApiKeys
from echelon_platform.adapters.outages import UNTRANSLATED_OUTAGES
from echelon_platform.adapters.readmodel_store import CertificateReader, Freshness, OwnerReader, RunReader
from echelon_platform.adapters.redis_lane import RedisLane
from echelon_platform.adapters.run_admission import RunAdmission
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import PublishedKeys
from echelon_platform.config import Settings
from echelon_platform.domain.roles import Role
from echelon_platform.errors import (
    AuthError,
    EchelonError,
    Forbidden,
    InfrastructureError,
    NotFound,
    OracleRefused,
    RateLimited,
    RequestRejected,
)

log = structlog.get_logger(__name__)
RETRY_AFTER_S = "1"  # seconds a client waits before retrying a 503 (a backing service failed)

DESCRIPTION = """Verify AI oracle constructs against git history and issue calibration certificates.

**Authentication** (runs, ratings, the stream): `Authorization: Bearer <JWT>`, or Sign-In with Ethereum
(EIP-4361): get a nonce from `GET /api/v1/auth/nonce`, sign an EIP-4361 message naming this service's
domain, URI and an accepted chain id with that nonce (EIP-191 `personal_sign`; issued ≤ 5 minutes ago) and
send `X-Wallet-Address`, `X-Wallet-Message` (base64 of the text) and `X-Wallet-Signature` (0x hex). Each
nonce signs in once. A wallet user's id is `wallet:<checksummed address>`. Certificates are public; stats
count public certificates (and, for a signed-in caller, their own runs).

**Live events**: WebSocket `GET /api/v1/stream` (protocol in `echelon_platform/api/stream.py`).
"""


def _status_for(exc: EchelonError) -> int:
    match exc:
        case AuthError():
            return 401
        case Forbidden():
            return 403
        case NotFound():
            return 404
        case RequestRejected() | OracleRefused():
            return 422
        case RateLimited():
            return 429
        case InfrastructureError():
            return 503
        case _:
            return 500


def _with_security(schema: dict[str, Any]) -> dict[str, Any]:
    """`get_user_or_wallet` shows up as HTTPBearer; say what it accepts: Bearer OR all three wallet headers."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            if isinstance(operation, dict) and operation.get("security") == [{"HTTPBearer": []}]:
                operation["security"] = SECURITY_REQUIREMENT
    return schema


def _attach(app: FastAPI, services: Services) -> RedisLane:
    """Per-process helpers that need the connected services; the caller closes the lane it returns."""
    app.state.services = services
    # The hot routes' Redis round trips share one pipelined connection (adapters/run_admission.py, GET /runs/{id}).
    api_keys = app.state.api_keys = ApiKeys(services.read_models)
    lane = api_keys.lane()
    freshness = Freshness.of(app.state.settings.redis_prefix, app.state.settings.partitioning)
    app.state.run_reader = RunReader(services.read_models, lane, freshness=freshness)
    app.state.run_source = RunSource(app.state.run_reader, services.store, services.bus, services.subjects)
    app.state.certificate_source = CertificateSource(CertificateReader(services.read_models, freshness), services.store)
    app.state.publisher = Publisher(services.bus, services.metrics)
    app.state.owners = stream.owner_cache(services, app.state.run_reader)
    app.state.signing_keys = PublishedKeys(services.store, app.state.settings)
    app.state.run_admission = RunAdmission(
        lane,
        api_keys.rate_limiter(limit=app.state.options.runs_per_minute, window_s=60),
        api_keys.recent_runs(),
        OwnerReader(services.read_models),
    )
    app.state.ws_connections = stream.ConnectionCounter(app.state.settings.ws_max_connections_per_user)
    app.state.ws_pending = PendingSockets(
        limit=app.state.settings.ws_max_unauthenticated,
        per_address=app.state.settings.ws_max_unauthenticated_per_address,
    )
    return lane


def create_app(settings: Settings, services: Services | None = None, *, options: ApiOptions | None = None) -> FastAPI:
    """Build the app. When `services` is given (tests, `stack up`) its lifecycle belongs to the caller."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.check_api_exposure()  # the entry points check first; this covers any other way to serve
        if settings.uses_dev_secret:
            # Anyone can mint tokens for the published development secret: fine on loopback only.
            log.warning("api.dev_jwt_secret", hint="set ECHELON_JWT_SECRET before exposing the API")
        if services is not None:
            lane = _attach(app, services)
            try:
                yield
            finally:
                await lane.close()
            return
        # No reconnect buffering: a publish that failed (503) must never be sent later.
        async with Services(settings, name="echelon-api", buffer_while_reconnecting=False, role=Role.API) as owned:
            lane = _attach(app, owned)
            try:
                yield
            finally:
                await lane.close()

    app = FastAPI(
        title="echelon-verify",
        version="0.2.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # install_docs serves /docs and /redoc without a CDN
        redoc_url=None,
        # No OpenTelemetry here (metrics are Prometheus, /metrics): without this FastAPI looks up the global
        # OTel providers, environment variables included, on every request (4% of a POST /runs's CPU).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_docs(app)
    app.state.settings = settings
    app.state.options = options or ApiOptions.from_settings(settings)
    app.state.tokens = TokenCache(settings.jwt_secret.get_secret_value(), settings.jwt_algorithm)
    app.include_router(runs.router)
    app.include_router(rescore.router)
    app.include_router(certificates.router)
    app.include_router(certificates.well_known)
    app.include_router(stats.router)
    app.include_router(methodology_registry.router)
    app.include_router(stream.router)
    app.include_router(signin.router)
    app.include_router(run_events.router)
    install_dashboard(app)
    # One layer: request id and access log, origin checks and CORS, the body limit, strict shallow JSON, and
    # POST /runs answered from there (api/direct.py).
    app.add_middleware(
        Edge,
        policy=OriginPolicy.from_settings(settings),
        max_bytes=settings.max_body_bytes,
        direct=DirectRoutes.of_kind(app, runs.router, runs.SubmitRunRoute),
    )

    @app.exception_handler(EchelonError)
    async def _domain_error(request: Request, exc: EchelonError) -> JSONResponse:
        code = _status_for(exc)
        headers: dict[str, str] = {}
        if code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        if code == 503:
            headers["Retry-After"] = RETRY_AFTER_S  # a backing service is failing: nothing was done, retry
        if code >= 500:
            log.error("api.error", error=str(exc), path=request.url.path)
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

    async def _infrastructure(request: Request, exc: Exception) -> JSONResponse:
        # Adapters that do not translate library errors yet still must not turn an outage into a 500.
        log.error("api.unavailable", error=str(exc) or type(exc).__name__, path=request.url.path)
        return JSONResponse(
            {"detail": "a backing service is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_S},
        )

    app.add_exception_handler(RequestValidationError, validation_error_answer)  # never echoes secrets
    for outage in UNTRANSLATED_OUTAGES:
        app.add_exception_handler(outage, _infrastructure)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_security(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(request: Request) -> JSONResponse:
        """Ready means serving what the log says (api/readiness.py): NATS, Postgres and Redis reachable, the
        stream and every durable consumer present, the writer neither stalled nor far behind, the read models
        level with the log (checkpoint present, no rebuild pending or running). Answers within
        `ECHELON_READY_TIMEOUT_S` whatever hangs; 503 names every check that fails."""
        report = await readiness.check(request.app.state.services, settings)
        body = Readiness(ready=report.ready, checks=report.checks).model_dump()
        return JSONResponse(body, status_code=200 if report.ready else 503)

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics."""
        svc: Services = request.app.state.services
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
