"""How a judge call's failure reads to the adaptive limiter: which answers mean "too many at once"."""

from __future__ import annotations

from echelon_platform.adapters.adaptive_limit import Slot, retry_after_seconds
from pipeline_workers.scoring.messages_api import JudgeStatusError, JudgeUnreachable

# 429 rate limited, 529 overloaded, 503 unavailable: the provider asks for fewer calls, not a fix.
OVERLOAD_STATUS = frozenset({429, 503, 529})


def classify_judge_failure(exc: BaseException, slot: Slot) -> None:
    if isinstance(exc, JudgeUnreachable) and exc.timed_out:  # slower than it can serve: as overloaded as a 529
        slot.overloaded(None)
        return
    if isinstance(exc, JudgeStatusError):
        slot.headers(exc.headers)
        # Any 5xx counts too: a provider failing under load needs fewer calls, not the same again.
        if exc.status in OVERLOAD_STATUS or exc.status >= 500 or exc.kind == "overloaded_error":
            slot.overloaded(retry_after_seconds(exc.headers.get("retry-after")), rate_limited=exc.status == 429)
            return
    slot.failed()
