"""The FastAPI application: lifespan-built resources, one error mapping, health and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from ulid import ULID

from echelon_platform.api import runs
from echelon_platform.api.schemas import Readiness
from echelon_platform.config import Settings
from echelon_platform.errors import (
    AuthError,
    EchelonError,
    InfrastructureError,
    NotFound,
    OracleRefused,
    RateLimited,
    RequestRejected,
)
from echelon_platform.services import Services

log = structlog.get_logger(__name__)


def _status_for(exc: EchelonError) -> int:
    match exc:
        case AuthError():
            return 401
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


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the app. When `services` is given (tests, `stack up`) its lifecycle belongs to the caller."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services is not None:
            app.state.services = services
            yield
            return
        async with Services(settings, name="echelon-api") as owned:
            app.state.services = owned
            yield

    app = FastAPI(
        title="echelon-verify",
        version="0.1.0",
        description="Verify AI oracle constructs against git history and issue calibration certificates.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.include_router(runs.router)

    @app.exception_handler(EchelonError)
    async def _domain_error(request: Request, exc: EchelonError) -> JSONResponse:
        code = _status_for(exc)
        headers: dict[str, str] = {}
        if code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        if code >= 500:
            log.error("api.error", error=str(exc), path=request.url.path)
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

    @app.middleware("http")
    async def _request_context(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = request.headers.get("x-request-id") or str(ULID())
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        request.app.state.services.metrics.http_latency.labels(
            request.method, path, str(response.status_code)
        ).observe(time.perf_counter() - started)
        response.headers["X-Request-ID"] = request_id
        return response

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(request: Request) -> JSONResponse:
        """NATS, Postgres and Redis are reachable."""
        svc: Services = request.app.state.services
        checks: dict[str, str] = {}
        names = ("nats", "postgres", "redis")
        results = await asyncio.gather(
            svc.bus.ping(), svc.store.ping(), svc.read_models.ping(), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            checks[name] = "ok" if result is None else f"unreachable: {result}"
        ready = all(v == "ok" for v in checks.values())
        body = Readiness(ready=ready, checks=checks).model_dump()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics."""
        svc: Services = request.app.state.services
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
