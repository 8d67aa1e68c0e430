"""How a judge call's failure reads to the adaptive limiter: which answers mean "too many at once"."""

from __future__ import annotations

import anthropic

from echelon_platform.adapters.adaptive_limit import Slot, retry_after_seconds

# 429 rate limited, 529 overloaded, 503 unavailable: the provider asks for fewer calls, not a fix.
OVERLOAD_STATUS = frozenset({429, 503, 529})


def classify_judge_failure(exc: BaseException, slot: Slot) -> None:
    if isinstance(exc, anthropic.APITimeoutError):  # slower than it can serve: as overloaded as a 529
        slot.overloaded(None)
        return
    if isinstance(exc, anthropic.APIStatusError):
        headers = exc.response.headers
        slot.headers(headers)
        # Any 5xx counts too: a provider failing under load needs fewer calls, not the same again.
        if exc.status_code in OVERLOAD_STATUS or exc.status_code >= 500 or exc.type == "overloaded_error":
            slot.overloaded(retry_after_seconds(headers.get("retry-after")))
            return
    slot.failed()
