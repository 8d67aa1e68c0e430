"""Reads answered from the event log while the read models are not level with it (a rebuild is pending or
running: their checkpoint is missing, of another generation, or a rebuild marker is set). The run's events
are folded with the projection the read models are built with (`apply`), so the answer is what the models
will say once rebuilt; never the stale or missing value a lost read model would give."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import HTTPException

from api.schemas import ErrorBody
from echelon_platform.domain.events import CertificateIssued
from echelon_platform.domain.projections import RunState, apply, public_certificate
from echelon_platform.errors import StoreError
from echelon_platform.ports.log import LogReader

log = structlog.get_logger(__name__)

CERT_PREFIX = "cert-"  # a certificate's id names its run (echelon_platform/domain/certificate.py)
LOG_READ_TIMEOUT_S = 2.0  # per step (pool wait, query): then 503 with Retry-After
RETRY_AFTER_S = 1


async def run_from_log(log: LogReader, run_id: str) -> RunState | None:
    """The run as its logged events say (None: the log has no request for it). StoreError when the log does
    not answer in time."""
    state, _ = await _fold(log, run_id)
    return state if state.visible else None


async def certificate_from_log(log: LogReader, cert_id: str) -> dict[str, Any] | None:
    """The certificate that decided its run, from the log (None when the log has no such public one)."""
    if not cert_id.startswith(CERT_PREFIX):
        return None
    state, certificates = await _fold(log, cert_id.removeprefix(CERT_PREFIX))
    found = certificates.get(cert_id)
    return found if found is not None and public_certificate(state, found) else None


async def _fold(log: LogReader, run_id: str) -> tuple[RunState, dict[str, dict[str, Any]]]:
    state = RunState(run_id=run_id)
    certificates: dict[str, dict[str, Any]] = {}
    if not run_id.isascii() or not run_id.isalnum() or len(run_id) > 64:
        return state, certificates  # not an id the API issues: nothing to look up
    for seq, event in await log.run_log(run_id, timeout=LOG_READ_TIMEOUT_S):
        state = apply(state, event, seq)
        if event.topic == CertificateIssued.TOPIC:
            cert = event.payload["certificate"]
            certificates[cert["certificate_id"]] = cert
    return state, certificates


NOT_LEVEL: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorBody,
        "description": "A backing service is unavailable, or the read models are being rebuilt and the event log "
        "did not answer in time; retry (after `Retry-After` seconds when given)",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait"}},
    }
}


def not_level(exc: StoreError) -> HTTPException:
    """503 with `Retry-After`: the read models are not level with the log and the log did not answer."""
    log.warning("api.log_read_failed", error=str(exc))
    return HTTPException(
        status_code=503,
        detail="the read models are being rebuilt and the event log did not answer in time; retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )
