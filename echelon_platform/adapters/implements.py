"""Which adapter implements which port: mypy (strict, run in CI) checks each pair here, so a server adapter
and its in-memory twin cannot drift from the port they share. Nothing calls this at run time."""

from __future__ import annotations

from echelon_platform.adapters.bus import Bus
from echelon_platform.adapters.event_store import EventStore
from echelon_platform.adapters.memory import MemoryBacklog, MemoryLog, MemoryPublisher, MemoryRunStates, MemorySecrets
from echelon_platform.adapters.readmodel_store import ReadModels
from echelon_platform.adapters.secret_store import SecretStore
from echelon_platform.ports.bus import Publisher, RawPublisher, StreamLookup, WriterBacklog
from echelon_platform.ports.log import EventLog
from echelon_platform.ports.run_secrets import SecretKeeper
from echelon_platform.ports.runs import RunStates


def logs(postgres: EventStore, memory: MemoryLog) -> list[EventLog]:
    return [postgres, memory]


def publishers(nats: Bus, memory: MemoryPublisher) -> list[Publisher]:
    return [nats, memory]


def raw_publishers(nats: Bus, memory: MemoryPublisher) -> list[RawPublisher]:
    return [nats, memory]


def writer_backlogs(nats: Bus, memory: MemoryBacklog) -> list[WriterBacklog]:
    return [nats, memory]


def stream_lookups(nats: Bus, memory: MemoryPublisher) -> list[StreamLookup]:
    return [nats, memory]


def run_states(redis: ReadModels, memory: MemoryRunStates) -> list[RunStates]:
    return [redis, memory]


def secret_keepers(postgres: SecretStore, memory: MemorySecrets) -> list[SecretKeeper]:
    return [postgres, memory]
