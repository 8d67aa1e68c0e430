"""Who may do what through the JetStream API: derived from the role table and the bus's names. Pure.

Publishing events is in roles.py (`publish_subjects`); this module adds the JetStream API subjects each
role may publish to. Deny by default: a NATS user with a publish allow-list may publish nowhere else, so
no role but SETUP can create, change, purge or delete a stream, and none at all can create another stream
(republish or mirror/source into `<root>.>` is therefore impossible). Per role:

- every role: stream info, and reading stored messages by sequence (`STREAM.MSG.GET`, `DIRECT.GET`):
  readers (`echelon tail`, the API's WebSocket stream, rebuild) follow the stream with direct gets instead
  of ephemeral consumers, because the create-consumer API takes a consumer *name* in its body and would
  let any reader re-configure another role's durable consumer;
- a consuming role: fetch (`CONSUMER.MSG.NEXT`) from and ack (`$JS.ACK`) its own durable consumers only;
  info of every durable consumer of ours (read-only: the watchdog and `/readyz` read the writers' backlog);
- the coordinator: also deletes and re-creates its own durable consumers (a new writer rewinds its
  consumer to the ack floor when it takes over; NATS 2.9 has no in-place reset);
- SETUP (`echelon setup`, `echelon stack up`, test fixtures): creates and updates *our* stream, and
  creates, updates and deletes every durable consumer of ours; it publishes no event, and can neither
  purge nor delete the stream nor create any other.

Durable names come from the same functions the roles use (`stage_durable`, `writer_durable`).
"""

from __future__ import annotations

from dataclasses import dataclass

from echelon_platform.domain.partitions import Partitioning
from echelon_platform.domain.roles import STAGE_ROLES, Role, publish_subjects
from echelon_platform.domain.stages import STAGES

JS_API = "$JS.API"

# The stages with a durable consumer each (pipeline_workers/handlers), and the topic each consumes.
STAGE_TOPICS: dict[str, str] = {s.name: s.consumes.TOPIC for s in STAGES}

# The stages whose durable consumers each role fetches from: a stage's own user, and the shared user of
# the stages that may share a process.
ROLE_STAGES: dict[Role, tuple[str, ...]] = {
    **{STAGE_ROLES[s.name]: (s.name,) for s in STAGES},
    Role.STAGES: tuple(s.name for s in STAGES if not s.alone),
}


def stage_durable(consumer_prefix: str, stage: str) -> str:
    """The durable consumer a stage's workers share (every partition: a stage reads its topic whole)."""
    return f"{consumer_prefix}-{stage}"


def writer_durable(consumer_prefix: str, partitioning: Partitioning, partition: int) -> str:
    """The durable consumer a partition's writer (the coordinator) consumes through."""
    return f"{consumer_prefix}-coordinator{partitioning.suffix(partition)}"


@dataclass(frozen=True, slots=True)
class BusLayout:
    """The names the permissions are written for: one stream, its subject root, the durable prefix."""

    stream: str = "VERIFY"
    subject_root: str = "verify"
    consumer_prefix: str = "echelon"
    partitions: int = 1

    @property
    def partitioning(self) -> Partitioning:
        return Partitioning(self.partitions)

    def writer_durables(self) -> list[str]:
        return [writer_durable(self.consumer_prefix, self.partitioning, k) for k in self.partitioning.indices]

    def stage_durables(self) -> list[str]:
        return [stage_durable(self.consumer_prefix, stage) for stage in STAGE_TOPICS]

    def durables(self) -> list[str]:
        return [*self.writer_durables(), *self.stage_durables()]

    def consumes(self, role: Role) -> list[str]:
        """The durable consumers `role` fetches from and acks."""
        if role is Role.COORDINATOR:
            return self.writer_durables()
        return [stage_durable(self.consumer_prefix, stage) for stage in ROLE_STAGES.get(role, ())]


def _create_consumer(stream: str, durable: str) -> list[str]:
    # The legacy durable form (nats-py without a consumer `name`) and the 2.9+ named forms; the server
    # refuses a body whose name differs from the one in the subject.
    return [
        f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}.>",
    ]


def jetstream_subjects(role: Role, layout: BusLayout) -> list[str]:
    """The JetStream API (and ack) subjects `role` may publish to: see the module docstring."""
    stream = layout.stream
    subjects = [
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
    ]
    subjects += [f"{JS_API}.CONSUMER.INFO.{stream}.{durable}" for durable in layout.durables()]
    for durable in layout.consumes(role):
        subjects += [f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{durable}", f"$JS.ACK.{stream}.{durable}.>"]
    if role is Role.COORDINATOR:
        for durable in layout.writer_durables():
            subjects += [f"{JS_API}.CONSUMER.DELETE.{stream}.{durable}", *_create_consumer(stream, durable)]
    if role is Role.SETUP:
        subjects += [
            f"{JS_API}.INFO",
            f"{JS_API}.STREAM.CREATE.{stream}",
            f"{JS_API}.STREAM.UPDATE.{stream}",
            f"{JS_API}.CONSUMER.NAMES.{stream}",
            f"{JS_API}.CONSUMER.LIST.{stream}",
        ]
        for durable in layout.durables():
            # Delete too: NATS 2.9 cannot change a consumer's filter in place; setup re-creates it.
            subjects += [*_create_consumer(stream, durable), f"{JS_API}.CONSUMER.DELETE.{stream}.{durable}"]
    return subjects


def may_provision(user: str | None) -> bool:
    """Whether a NATS user creates the stream and consumers itself: SETUP, no user (a server without
    authentication), or a user that is none of our roles (an operator's own, with its own rights). A user
    named after a role has that role's permissions, which create nothing (the coordinator: its own only)."""
    return user is None or user == Role.SETUP.value or user not in {role.value for role in Role}


def allowed_publish(role: Role, layout: BusLayout) -> list[str]:
    """Everything `role` may publish to: its JetStream API subjects, then its event topics."""
    return [*jetstream_subjects(role, layout), *publish_subjects(role, layout.subject_root, layout.partitions)]
