"""In-memory twins of the ports (`echelon_platform.ports`): the same behaviour as the server adapters, held
to it by the contract tests, so roles' logic runs in unit tests without NATS, Postgres or Redis."""

from echelon_platform.adapters.memory.bus import MemoryBacklog, MemoryPublisher
from echelon_platform.adapters.memory.log import MemoryLog
from echelon_platform.adapters.memory.run_secrets import MemorySecrets
from echelon_platform.adapters.memory.runs import MemoryRunStates

__all__ = ["MemoryBacklog", "MemoryLog", "MemoryPublisher", "MemoryRunStates", "MemorySecrets"]
