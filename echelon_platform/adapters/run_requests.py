"""`request_of(run)`: a run's request event, for whoever needs more of it than the events they consume carry."""

from __future__ import annotations

from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import RunRequested, Subjects, payload_as
from echelon_platform.ports.bus import StreamLookup
from echelon_platform.ports.log import LogReader


async def request_of(stream: StreamLookup, log: LogReader, subjects: Subjects, run_id: str) -> RunRequested | None:
    """The run's request: from the stream (recent, and there before the writer logs it), else from the log
    (kept for good). Only a valid event: a malformed message on the run's subject never stands in for it.
    BusError / StoreError when the server does not answer."""
    envelope = await requested_on_stream(stream, subjects, run_id)
    if envelope is None:
        events = await log.run_events(run_id, [RunRequested.TOPIC])
        envelope = events[0] if events else None
    return payload_as(envelope, RunRequested) if envelope is not None else None


async def requested_on_stream(stream: StreamLookup, subjects: Subjects, run_id: str) -> Envelope | None:
    """The run's first valid request event in the stream (there before the writer logs it)."""
    return await stream.first_valid_on_subject(subjects.subject(RunRequested.TOPIC, run_id))
