"""How runs are spread over the event log's partitions: pure, the same answer in every process.

Each partition has one fenced writer, its own consumer, log positions, read-model checkpoint and projector
lock; order is guaranteed per partition (so per run), not across partitions. With one partition (the default)
every name is the one the product has always used, so a deployment that never sets a count is unchanged.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from echelon_platform.errors import ConfigError

MAX_PARTITIONS = 64


@dataclass(frozen=True, slots=True)
class Partitioning:
    """`count` partitions; a run's partition is a stable hash of its id (never Python's salted hash())."""

    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_PARTITIONS:
            raise ConfigError(f"the partition count must be between 1 and {MAX_PARTITIONS}, not {self.count}")

    @property
    def partitioned(self) -> bool:
        return self.count > 1

    @property
    def indices(self) -> range:
        return range(self.count)

    def of_run(self, run_id: str) -> int:
        """The partition that holds every event of `run_id` (CRC-32: cheap, stable, evenly spread)."""
        return zlib.crc32(run_id.encode()) % self.count if self.count > 1 else 0

    def suffix(self, partition: int) -> str:
        """Appended to per-partition names (lease, consumer, Redis keys); empty with one partition."""
        return f"-{partition}" if self.count > 1 else ""  # "-": NATS durable names allow no dots

    def parse(self, spec: str) -> tuple[int, ...]:
        """The partitions a writer process stands for, from `"0,2"` (empty: all of them)."""
        if not spec.strip():
            return tuple(self.indices)
        chosen: list[int] = []
        for part in spec.split(","):
            token = part.strip()
            if not token.isdigit() or int(token) >= self.count:
                raise ConfigError(
                    f"writer partition {token!r} is not one of 0..{self.count - 1} (ECHELON_WRITER_PARTITIONS)"
                )
            chosen.append(int(token))
        return tuple(dict.fromkeys(chosen))
