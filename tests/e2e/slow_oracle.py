"""A deterministic oracle that takes its time: the bundled sample oracle, half a second later."""

from __future__ import annotations

import time
from typing import Any

from pipeline_workers.oracles.sample import summarise


def summarise_slowly(request: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.5)
    return summarise(request)


def summarise_verbosely(request: dict[str, Any]) -> dict[str, Any]:
    """A reply bigger than a NATS message may be."""
    return {**summarise(request), "summary": "x" * 1_200_000}
