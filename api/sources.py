"""What a read route loads one run or one certificate from: the read models while they are level with the
log, else the log, and (for a run just accepted) the stream. Built once per process (app.py `_attach`)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from api.log_reads import certificate_from_log, not_level, run_from_log
from echelon_platform.adapters.readmodel_store import CertificateReader, RunReader
from echelon_platform.adapters.run_requests import requested_on_stream
from echelon_platform.domain.events import Subjects
from echelon_platform.domain.projections import RunState, apply
from echelon_platform.domain.values import CalibrationCertificate
from echelon_platform.errors import NotFound, ReadModelError, StoreError
from echelon_platform.ports.bus import StreamLookup
from echelon_platform.ports.log import LogReader


@dataclass(frozen=True, slots=True)
class RunSource:
    reader: RunReader
    log: LogReader
    stream: StreamLookup
    subjects: Subjects

    async def load(self, run_id: str) -> RunState | None:
        """The projected run; while the read models are not level with the log (a rebuild pending or
        running), the run folded from the log instead; and, right after a 201, before the coordinator logged
        it, the request event itself, read straight from the stream, so a GET after a POST never 404s.
        StoreError when the models are not level and the log does not answer (503)."""
        state, fresh = await self.reader.checked(run_id)
        if fresh and state is not None and state.visible:
            return state
        if not run_id.isascii() or not run_id.isalnum() or len(run_id) > 64:
            return None
        if not fresh:
            # A missing or older model says nothing about the log: the log answers (a logged run is never
            # PENDING or 404 because Redis lost it or a rebuild is under way).
            logged = await run_from_log(self.log, run_id)
            if logged is not None:
                return logged
            state = None
        # The first valid request: malformed bytes on the subject are parked by the writer, never shown.
        requested = await requested_on_stream(self.stream, self.subjects, run_id)
        if requested is None:
            return None
        return apply(state or RunState(run_id=run_id), requested, 0)  # not logged yet: no position


@dataclass(frozen=True, slots=True)
class CertificateSource:
    reader: CertificateReader
    log: LogReader

    async def load(self, cert_id: str) -> CalibrationCertificate:
        """The public certificate; while the read models are not level with the log (a rebuild pending or
        running) and do not hold it, read from the log (StoreError, a 503, when the log does not answer)."""
        raw, fresh = await self.reader.checked(cert_id)
        if raw is None and not fresh:
            try:
                raw = await certificate_from_log(self.log, cert_id)  # a public certificate never changes once issued
            except StoreError as exc:
                raise not_level(exc) from exc
        if raw is None:
            raise NotFound(f"certificate {cert_id} not found")
        try:
            return CalibrationCertificate.model_validate(raw)
        except ValidationError as exc:  # a read model this build cannot read: an operator's problem, not the caller's
            raise ReadModelError(
                f"certificate {cert_id} is stored in an unreadable form: {exc.errors()[0]['msg']}"
            ) from exc
