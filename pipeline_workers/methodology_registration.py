"""The methodology registry, from the stages' side: the certify stage registers the version it certifies
with (its files, their hashes and the hash over them) when the log does not hold it yet."""

from __future__ import annotations

import structlog

from echelon_platform.domain.envelope import utcnow
from echelon_platform.domain.events import METHODOLOGY_RUN_ID, MethodologyRegistered, make_event
from echelon_platform.ports.bus import Publisher
from echelon_platform.ports.log import LogQueries
from pipeline_workers.scoring.prompts import Methodology, load_methodology

log = structlog.get_logger(__name__)


def registration(methodology: Methodology, registered_by: str) -> MethodologyRegistered:
    return MethodologyRegistered(
        run_id=METHODOLOGY_RUN_ID,
        version=methodology.version,
        sha256=methodology.sha256,
        files=dict(methodology.files),
        contents=dict(methodology.contents),
        description=methodology.description,
        registered_by=registered_by,
        registered_at=utcnow(),
    )


async def register_if_missing(
    log_queries: LogQueries, publisher: Publisher, version: str, registered_by: str = "certify-stage"
) -> bool:
    """Publish the packaged methodology ``version`` unless the log holds it; True when published.

    The dedup key is the version, so two stages starting at once still log it once (the first wins)."""
    methodology = load_methodology(version)
    event = make_event(registration(methodology, registered_by))
    if await log_queries.has_dedup_keys([event.dedup_key]):
        return False
    await publisher.publish(event)
    log.info("methodology.registered", version=version, sha256=methodology.sha256)
    return True
