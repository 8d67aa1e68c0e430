"""A fetched batch split for the writer: events to log, poison to park (with its reason), events handed back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from coordinator.admission import Refusal
from echelon_platform.adapters.bus import Delivery, message_sequence
from echelon_platform.domain.admission import check_event
from echelon_platform.domain.envelope import Envelope, utcnow
from echelon_platform.domain.events import Subjects, parse_payload
from echelon_platform.errors import EnvelopeError
from echelon_platform.ports.log import ParkedEvent

RETRY_HEADER = "Echelon-Retry-Of"


@dataclass(frozen=True, slots=True)
class Decoded:
    events: list[tuple[Envelope, int]]
    parked: list[ParkedEvent]
    retried: list[int]  # parked rows an operator re-drove (marked in the same transaction)
    deferred: list[int] = field(default_factory=list)  # handed back to the stream (see park_refused)


def decode_batch(msgs: Sequence[Delivery], subjects: Subjects | None = None) -> Decoded:
    """Split a batch into valid events and poison (with the reason it was refused). With `subjects` of a
    partitioned log, an event published on another partition than its run's is poison too: logging it here
    would put one run's events under two writers, out of order. With `subjects`, an event must also travel
    on exactly its own subject, carry its natural dedup key and fit its topic's size (`check_event`)."""
    partitioned = subjects if subjects is not None and subjects.partitioning.partitioned else None
    events: list[tuple[Envelope, int]] = []
    parked: list[ParkedEvent] = []
    retried: list[int] = []
    for msg in msgs:
        seq = message_sequence(msg)
        retry_of = (msg.headers or {}).get(RETRY_HEADER)
        if retry_of and retry_of.isdigit():
            retried.append(int(retry_of))
        try:
            envelope = Envelope.from_wire(msg.data)
            payload = parse_payload(envelope)
            if partitioned is not None:
                _check_partition(partitioned, msg.subject, envelope)
            if subjects is not None:
                check_event(msg.subject, len(msg.data), envelope, payload, subjects)
        except EnvelopeError as exc:
            parked.append(ParkedEvent(seq, msg.subject, bytes(msg.data), str(exc)))
            continue
        events.append((envelope, seq))
    return Decoded(events, parked, retried)


def _check_partition(subjects: Subjects, subject: str, envelope: Envelope) -> None:
    published = subjects.partition_of_subject(subject)
    owner = subjects.partitioning.of_run(envelope.run_id)
    if published != owner:
        raise EnvelopeError(
            f"published on partition {published} but run {envelope.run_id} belongs to partition {owner} "
            f"(publish on {subjects.for_event(envelope)})"
        )


def park_refused(decoded: Decoded, msgs: Sequence[Delivery], refused: Sequence[Refusal], grace_s: float) -> None:
    """Move the events the admission checks refused from the batch's events to its parked rows; one whose
    refusal may pass by itself (its run's request not logged yet: a redelivery can overtake the request
    after a fault) is handed back to the stream instead while it is younger than `grace_s`."""
    if not refused:
        return
    reasons = {r.stream_seq: r.reason for r in refused}
    now = utcnow()
    may_pass = {r.stream_seq for r in refused if r.may_pass_later}
    young = {seq for env, seq in decoded.events if seq in may_pass and (now - env.timestamp).total_seconds() < grace_s}
    for msg in msgs:
        seq = message_sequence(msg)
        if seq in young:
            decoded.deferred.append(seq)
        elif seq in reasons:
            decoded.parked.append(ParkedEvent(seq, msg.subject, bytes(msg.data), reasons[seq]))
    decoded.events[:] = [(env, seq) for env, seq in decoded.events if seq not in reasons]


def poison_msgs(msgs: list[Delivery], decoded: Decoded) -> list[tuple[Delivery, ParkedEvent]]:
    if not decoded.parked:
        return []  # the usual case: no reply subject to parse
    by_seq = {p.stream_seq: p for p in decoded.parked}
    return [(m, by_seq[message_sequence(m)]) for m in msgs if message_sequence(m) in by_seq]
