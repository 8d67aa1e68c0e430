"""The JetStream adapter: one stream over `<root>.>`, publish with dedup, durable pull consumers.

Who creates the stream and the consumers: a bus that `provisions` (the SETUP role, or a server without
authentication, where nothing is enforced anyway) creates or updates them on demand. Any other role only
binds to what `echelon setup` created, and raises `SetupMissing` when it is gone: the role's process then
exits non-zero (its supervisor restarts it once setup has run again), instead of idling on a consumer that
no longer exists. The coordinator alone re-creates its own durable consumers (bus_access.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import NamedTuple, Self, TypeAlias

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from ulid import ULID

from echelon_platform.adapters.bus_puller import BatchPuller
from echelon_platform.adapters.nats_lane import LaneRefused, NatsPublishLane, lane_servers
from echelon_platform.domain.admission import check_event
from echelon_platform.domain.bus_access import may_provision
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import Subjects, parse_payload
from echelon_platform.errors import BusError, EnvelopeError, SetupMissing

log = structlog.get_logger(__name__)

NATS_MSG_ID = "Nats-Msg-Id"

# One JetStream message as handed to a role (ack, nak, in_progress, headers, data), named here so the roles
# never import nats themselves.
Delivery: TypeAlias = Msg
# What a fetch, an ack, a nak or an unsubscribe may raise when the server or the connection fails.
BUS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, nats.js.errors.Error, OSError)


class PublishAck(NamedTuple):
    seq: int
    duplicate: bool  # JetStream already held an event with this dedup key (within its duplicate window)


@dataclass(frozen=True, slots=True)
class ConsumerBacklog:
    durable: str
    pending: int  # messages not delivered yet, plus delivered and not acked
    ack_floor: int  # the stream sequence everything up to which is acked


class Bus:
    """A NATS connection that reconnects forever, with the stream ensured at start-up."""

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        subjects: Subjects,
        duplicate_window_s: float = 120.0,
        max_age_s: float = 30 * 86400,
        replicas: int = 1,
        name: str = "echelon",
        buffer_while_reconnecting: bool = True,
        user: str | None = None,
        password: str | None = None,
        provisions: bool | None = None,
    ) -> None:
        """`provisions`: may create/update the stream and consumers (default: `bus_access.may_provision`)."""
        self.url = url
        self.stream = stream
        self.subjects = subjects
        self.duplicate_window_s = duplicate_window_s
        self.max_age_s = max_age_s
        self.replicas = replicas
        self.name = name
        # False for a process that answers someone "not accepted" when a publish fails (the API): nats-py
        # would otherwise keep the publish in its reconnect buffer and send it later, after the answer.
        self.buffer_while_reconnecting = buffer_while_reconnecting
        # This process's NATS user: the server allows it to publish only its role's topics (see roles.py).
        self.user = user
        self._password = password
        self.provisions = may_provision(user) if provisions is None else provisions
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        # A process that never buffers (the API) publishes its acknowledged events through a lane of its own
        # (nats_lane.py: one loop turn per acknowledgement instead of four) when the URLs are plain TCP.
        servers = None if buffer_while_reconnecting else lane_servers(url)
        self._lane = (
            None
            if servers is None
            else NatsPublishLane(servers, stream=stream, name=f"{name}-publish", user=user, password=password)
        )

    async def __aenter__(self) -> Self:
        try:
            self._nc = await nats.connect(
                # A cluster is given as comma-separated URLs; the client fails over between them.
                [u.strip() for u in self.url.split(",") if u.strip()],
                name=self.name,
                user=self.user,
                password=self._password,
                # nats-py gives up after 60 attempts by default; a service must outlive any outage.
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                connect_timeout=5,
                # A stop drains for at most this long (not nats-py's 30 s): with the stream or a consumer
                # deleted under it, a drain never completes.
                drain_timeout=2,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect,
                # 0: a publish while disconnected raises at once instead of waiting in the buffer.
                pending_size=64 * 1024 * 1024 if self.buffer_while_reconnecting else 0,
            )
        except (OSError, nats.errors.Error) as exc:
            raise BusError(f"cannot connect to NATS at {self.url}: {exc}") from exc
        self._js = self._nc.jetstream(timeout=10)
        try:
            if self.provisions:
                await self.ensure_stream()
            else:
                await self.require_stream()
        except BaseException:
            await self._nc.close()
            raise
        if self._lane is not None:
            try:
                usable = await self._lane.start()
            except BusError as exc:  # connects again at the first publish
                log.warning("bus.publish_lane_unavailable", error=str(exc))
            else:
                if not usable:
                    log.info("bus.publish_lane_off", reason="the server refused the lane (TLS or credentials)")
                    self._lane = None
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._lane is not None:
            await self._lane.close()
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except (nats.errors.Error, TimeoutError, OSError):
                await self._nc.close()

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats.error", error=str(exc) or type(exc).__name__)

    async def _on_disconnect(self) -> None:
        if not self.buffer_while_reconnecting:
            self._drop_pending()
        if self._nc is not None and not (self._nc.is_closed or self._nc.is_draining):
            log.warning("nats.disconnected", url=self.url)

    async def _on_reconnect(self) -> None:
        log.info("nats.reconnected", url=self.url)

    def _drop_pending(self) -> None:
        """Forget commands queued but never written: nats-py replays them after a reconnect, and a publish
        whose caller already got an error must not happen later. No public API exists for this; the SUBs in
        there are re-sent from the subscription table on reconnect anyway."""
        if self._nc is not None:
            self._nc._pending = []
            self._nc._pending_data_size = 0

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise BusError("bus is not connected")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BusError("bus is not connected")
        return self._js

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def state(self) -> str:
        """The real connection state ("connected", "reconnecting", "connecting", "closed", "not started")."""
        nc = self._nc
        if nc is None:
            return "not started"
        if nc.is_closed:
            return "closed"
        if nc.is_connected:
            return "connected"
        return "reconnecting" if nc.is_reconnecting else "connecting"

    def _check_can_publish(self) -> None:
        if not self.buffer_while_reconnecting and not self.connected:
            raise BusError(f"NATS is not connected ({self.state}); nothing was published")

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            subjects=[self.subjects.everything],
            storage=StorageType.FILE,
            duplicate_window=self.duplicate_window_s,
            # Postgres keeps the log for good; the stream only needs enough for consumers to catch up.
            max_age=self.max_age_s,
            allow_direct=True,
            # 3 on a cluster: an acknowledged event is on a majority of servers and survives losing one.
            num_replicas=self.replicas,
        )

    async def ensure_stream(self) -> None:
        """Create or update the stream; every process does this at start-up, so it must be idempotent."""
        config = self.stream_config()
        try:
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as refused:
                # Exists with another config (e.g. a new duplicate window): bring it in line. If it does not
                # exist, the refusal was the real answer (e.g. a cluster still placing its peers).
                try:
                    await self.js.update_stream(config)
                except nats.js.errors.NotFoundError:
                    raise BusError(f"cannot create stream {self.stream}: {refused.description}") from refused
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot create stream {self.stream}: {exc}") from exc

    def _missing(self, what: str) -> SetupMissing:
        log.error("bus.setup_missing", missing=what, user=self.user, stream=self.stream)
        return SetupMissing(
            f"{what} does not exist and the {self.user or 'current'} NATS user may not create it: "
            "run `echelon setup` (or restart `echelon stack up`, which runs it)"
        )

    async def require_stream(self) -> None:
        """SetupMissing unless the stream exists (a role that may not create it)."""
        try:
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError as exc:
            raise self._missing(f"stream {self.stream}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot read stream {self.stream}: {exc or type(exc).__name__}") from exc

    async def require_consumer(self, durable: str) -> None:
        """SetupMissing unless `durable` (and its stream) exists; a role checks its consumer with this."""
        try:
            await self.js.consumer_info(self.stream, durable)
        except nats.js.errors.NotFoundError as exc:
            raise SetupMissing(f"consumer {durable} of stream {self.stream} does not exist") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot read consumer {durable}: {exc or type(exc).__name__}") from exc

    async def consumer_exists(self, durable: str) -> bool:
        """Whether `durable` exists (False also when the stream is gone); BusError when NATS cannot say."""
        try:
            await self.require_consumer(durable)
        except SetupMissing:
            return False
        return True

    async def publish(self, envelope: Envelope, *, timeout: float = 5.0) -> int:
        """Publish and wait for JetStream's ack; returns the stream sequence (also for a duplicate)."""
        return (await self.publish_acked(envelope, timeout=timeout)).seq

    async def publish_acked(self, envelope: Envelope, *, timeout: float = 5.0) -> PublishAck:
        """Publish and wait for JetStream's ack; says whether the dedup key was already stored."""
        self._check_can_publish()
        subject = self.subjects.for_event(envelope)
        acked = None
        if self._lane is not None:
            try:
                acked = await self._lane.publish(subject, envelope.to_wire(), envelope.dedup_key, timeout=timeout)
            except LaneRefused as exc:  # nothing was sent: this and later publishes take nats-py's path
                log.warning("bus.publish_lane_off", reason=str(exc))
                self._lane = None
            except BusError as exc:
                raise BusError(f"publish of {envelope.topic} failed: {exc}") from exc
        if acked is not None:
            seq, duplicate = acked.seq, acked.duplicate
        else:
            try:
                ack = await self.js.publish(
                    subject,
                    envelope.to_wire(),
                    timeout=timeout,
                    stream=self.stream,
                    headers={NATS_MSG_ID: envelope.dedup_key},
                )
            except (nats.errors.Error, TimeoutError) as exc:
                raise BusError(f"publish of {envelope.topic} failed: {exc or type(exc).__name__}") from exc
            seq, duplicate = int(ack.seq), bool(ack.duplicate)
        if duplicate and await self._id_taken_by_another(envelope, seq):
            return PublishAck(await self._publish_under_own_id(envelope, timeout), False)
        return PublishAck(seq, duplicate)

    async def _id_taken_by_another(self, envelope: Envelope, seq: int) -> bool:
        """JetStream answered "duplicate": is what it holds under this id an earlier copy of this event (same
        subject, topic and dedup key), or a message someone published first under our id to make JetStream
        drop ours (a certificate, say) for its whole duplicate window?"""
        try:
            stored = await self.js.get_msg(self.stream, seq=seq)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot read stream message {seq}: {exc or type(exc).__name__}") from exc
        if stored.subject != self.subjects.for_event(envelope):
            return True
        try:
            earlier = Envelope.from_wire(stored.data or b"")
        except EnvelopeError:
            return True
        return (earlier.topic, earlier.dedup_key) != (envelope.topic, envelope.dedup_key)

    async def _publish_under_own_id(self, envelope: Envelope, timeout: float) -> int:
        """Publish again under a one-off message id. Effects stay once: the writer appends by the event's
        own dedup key, whatever the message id."""
        log.warning("bus.message_id_taken", topic=envelope.topic, dedup_key=envelope.dedup_key)
        try:
            ack = await self.js.publish(
                self.subjects.for_event(envelope),
                envelope.to_wire(),
                timeout=timeout,
                stream=self.stream,
                headers={NATS_MSG_ID: f"{envelope.dedup_key}@{ULID()}"},
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"publish of {envelope.topic} failed: {exc or type(exc).__name__}") from exc
        return int(ack.seq)

    async def publish_many(self, envelopes: Sequence[Envelope], *, timeout: float = 10.0) -> list[int]:
        """Pipelined publish: all in flight at once, then wait for every ack."""
        self._check_can_publish()
        try:
            futures = [
                await self.js.publish_async(
                    self.subjects.for_event(env),
                    env.to_wire(),
                    stream=self.stream,
                    headers={NATS_MSG_ID: env.dedup_key},
                )
                for env in envelopes
            ]
            acks = await asyncio.wait_for(asyncio.gather(*futures), timeout)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"publish of {len(envelopes)} events failed: {exc or type(exc).__name__}") from exc
        seqs = [int(a.seq) for a in acks]
        for i, (envelope, ack) in enumerate(zip(envelopes, acks, strict=True)):
            if ack.duplicate and await self._id_taken_by_another(envelope, seqs[i]):
                seqs[i] = await self._publish_under_own_id(envelope, timeout)
        return seqs

    async def publish_raw(
        self, subject: str, data: bytes, msg_id: str | None = None, headers: dict[str, str] | None = None
    ) -> int:
        """Publish bytes as they are (operators re-driving parked events, tests planting poison)."""
        headers = dict(headers or {})
        if msg_id:
            headers[NATS_MSG_ID] = msg_id
        self._check_can_publish()
        try:
            ack = await self.js.publish(subject, data, stream=self.stream, headers=headers)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"publish to {subject} failed: {exc}") from exc
        return int(ack.seq)

    async def first_valid_on_subject(self, subject: str, *, scan: int = 16) -> Envelope | None:
        """The oldest *valid* event on one subject, straight from the stream. Bytes that are not a valid
        event of their topic, or an event the writer would not admit on this subject (which it parks), are
        skipped, so a message published on a live run's subject can never stand in for its real request.
        Needs `next_by_subj` (NATS 2.9+)."""
        seq = 1
        for _ in range(scan):
            try:
                raw = await self.js.get_msg(self.stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return None
            except (nats.errors.Error, TimeoutError) as exc:
                raise BusError(f"cannot read {subject} from the stream: {exc}") from exc
            try:
                envelope = Envelope.from_wire(raw.data or b"")
                # What the writer would park is skipped too (e.g. another run's request on this subject).
                check_event(subject, len(raw.data or b""), envelope, parse_payload(envelope), self.subjects)
            except EnvelopeError:
                seq = int(raw.seq or seq) + 1
                continue
            return envelope
        return None

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts (NATS `max_payload`, 1 MiB by default)."""
        return int(self.nc.max_payload)

    async def last_sequence(self) -> int:
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def pull_subscription(
        self,
        durable: str,
        filter_subject: str,
        *,
        ack_wait_s: float = 60.0,
        max_deliver: int = -1,
        max_ack_pending: int = 20_000,
    ) -> BatchPuller:
        """A started puller on a durable pull consumer (close it when done), for a stage: each fetch hands over
        what is waiting, else the first message to arrive. A provisioning bus creates the consumer or applies
        the settings to it; any other uses the one setup created, or raises SetupMissing."""
        if self.provisions:
            await self.apply_consumer(
                durable, filter_subject, ack_wait_s=ack_wait_s, max_deliver=max_deliver, max_ack_pending=max_ack_pending
            )
        elif not await self.consumer_exists(durable):
            raise self._missing(f"consumer {durable} of stream {self.stream}")
        try:
            return await BatchPuller(self.nc, stream=self.stream, durable=durable, linger_batch=1).start()
        except (nats.errors.Error, OSError) as exc:
            raise BusError(f"cannot subscribe to consumer {durable}: {exc or type(exc).__name__}") from exc

    async def apply_consumer(
        self,
        durable: str,
        filter_subject: str,
        *,
        ack_wait_s: float = 60.0,
        max_deliver: int = -1,
        max_ack_pending: int = 20_000,
    ) -> None:
        """Create the durable pull consumer, or apply these settings to it (setup's job)."""
        config = _consumer_config(durable, filter_subject, ack_wait_s, max_deliver, max_ack_pending)
        try:
            try:
                await self.js.add_consumer(self.stream, config)  # create, or update the editable fields
            except nats.js.errors.BadRequestError as exc:
                log.warning("bus.consumer_not_updated", durable=durable, reason=str(exc))
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot create consumer {durable}: {exc or type(exc).__name__}") from exc

    async def ensure_consumer(
        self, durable: str, filter_subject: str, *, ack_wait_s: float = 60.0, max_deliver: int = -1
    ) -> None:
        """Create the durable pull consumer unless it exists (it may have been rewound: see below). Only
        for consumers this user may create (setup; the coordinator its own); SetupMissing without a stream."""
        config = _consumer_config(durable, filter_subject, ack_wait_s, max_deliver, 20_000)
        try:
            try:
                await self.js.consumer_info(self.stream, durable)
                return
            except nats.js.errors.NotFoundError:
                pass
            try:
                await self.js.add_consumer(self.stream, config)
            except nats.js.errors.NotFoundError as exc:  # the stream itself is gone
                raise self._missing(f"stream {self.stream}") from exc
            log.info("bus.consumer_created", durable=durable, stream=self.stream)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot create consumer {durable}: {exc or type(exc).__name__}") from exc

    async def backlog_age_s(self, durable: str) -> float:
        """How long the oldest message `durable` has not acked has been waiting (0 when none)."""
        try:
            info = await self.js.consumer_info(self.stream, durable)
            if not (info.num_pending or info.num_ack_pending):
                return 0.0
            oldest = await self.js.get_msg(self.stream, seq=int(info.ack_floor.stream_seq or 0) + 1)
        except nats.js.errors.NotFoundError:
            return 0.0
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot read the backlog of {durable}: {exc or type(exc).__name__}") from exc
        return _age_s(oldest.time)

    async def rewind_consumer(
        self, durable: str, filter_subject: str, *, ack_wait_s: float = 60.0, max_deliver: int = -1
    ) -> int:
        """Redeliver now, in stream order, everything after the consumer's ack floor; returns the floor.

        A new writer calls this when it takes over: what the old one had fetched but not acked would
        otherwise come back only after `ack_wait`, behind newer events, and be logged out of stream order.
        The consumer is recreated to start at the floor (NATS 2.9 has no in-place reset)."""
        try:
            try:
                info = await self.js.consumer_info(self.stream, durable)
            except nats.js.errors.NotFoundError:
                return 0
            floor = int(info.ack_floor.stream_seq or 0)
            if not info.num_ack_pending:
                return floor
            config = _consumer_config(durable, filter_subject, ack_wait_s, max_deliver, 20_000)
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = floor + 1
            await self.js.delete_consumer(self.stream, durable)
            await self.js.add_consumer(self.stream, config)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot rewind consumer {durable}: {exc or type(exc).__name__}") from exc
        return floor

    def batch_puller(self, durable: str) -> BatchPuller:
        """A pull subscription on `durable` that fetches batches (the writer's; call `start()` on it)."""
        return BatchPuller(self.nc, stream=self.stream, durable=durable)

    async def stream_exists(self) -> bool:
        """Whether the stream exists (quietly: a readiness probe asks often); BusError when NATS cannot say."""
        try:
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            return False
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot read stream {self.stream}: {exc or type(exc).__name__}") from exc
        return True

    async def consumer_backlogs(self, durables: Sequence[str]) -> list[ConsumerBacklog | BusError | None]:
        """Per durable, read at once: its backlog, None when it does not exist, or the BusError that hid it."""

        async def one(durable: str) -> ConsumerBacklog | BusError | None:
            try:
                info = await self.js.consumer_info(self.stream, durable)
            except nats.js.errors.NotFoundError:
                return None
            except (nats.errors.Error, TimeoutError) as exc:
                return BusError(f"cannot read consumer {durable}: {exc or type(exc).__name__}")
            floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0
            return ConsumerBacklog(durable, int(info.num_pending or 0) + int(info.num_ack_pending or 0), floor)

        return list(await asyncio.gather(*(one(d) for d in durables)))

    async def first_age_s(self, subject: str, after_seq: int) -> float:
        """Seconds since the first message of `subject` after stream sequence `after_seq` was stored (0 when
        there is none)."""
        try:
            msg = await self.js.get_msg(self.stream, seq=after_seq + 1, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return 0.0
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot read {subject} from the stream: {exc or type(exc).__name__}") from exc
        return _age_s(msg.time)

    async def ping(self) -> None:
        # While reconnecting, flush() returns at once without a round trip: ask the connection instead.
        if not self.connected:
            raise BusError(f"NATS {self.state}")
        try:
            await self.nc.flush(timeout=2)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"NATS unreachable: {exc or type(exc).__name__}") from exc


def _age_s(stored: datetime | None) -> float:
    """Seconds since a stored message's timestamp (0 without one, or for a clock a little behind)."""
    return 0.0 if stored is None else max(0.0, (datetime.now(UTC) - stored).total_seconds())


def _consumer_config(
    durable: str, filter_subject: str, ack_wait_s: float, max_deliver: int, max_ack_pending: int
) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=filter_subject,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
    )


def message_sequence(msg: Msg) -> int:
    return int(msg.metadata.sequence.stream)


def message_pending(msg: Msg) -> int:
    return int(msg.metadata.num_pending)
