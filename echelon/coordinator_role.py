"""`echelon coordinator`: the single writer(s) of this process's log partitions, as a role process."""

from __future__ import annotations

import structlog

from coordinator.assembly import coordinators_for
from echelon.lifecycle import run_until_stopped, stop_signals
from echelon.stack import freeze_startup_heap, infrastructure, prepare
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.roles import Role

log = structlog.get_logger(__name__)


async def serve_coordinator(settings: Settings) -> int:
    """`echelon coordinator`: the writers of this process's partitions until SIGINT/SIGTERM (exit 0).

    Each waits as a standby until it holds its partition's writer lease, so several processes may run it.
    Exits 1 when the writers ended on their own (a supervisor restarts the process)."""
    with stop_signals() as stop:
        async with infrastructure(settings) as resolved:
            await prepare(resolved)
            async with (
                Services(
                    resolved,
                    name="echelon-coordinator",
                    pool_size=max(4, len(resolved.writer_partition_ids) + 2),  # an append in flight per partition
                    role=Role.COORDINATOR,
                ) as services,
                coordinators_for(services, resolved) as coordinator,
            ):
                freeze_startup_heap()
                code = await run_until_stopped("coordinator", [coordinator.run()], coordinator.stop, stop)
    log.info("coordinator.stopped", exit_code=code)
    return code
