"""Oracle callables for stage tests (allowlisted per test). A real module: sync ones run in a child process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pipeline_workers.oracles.sample import summarise

calls = 0  # the async oracle runs in the worker's own process, so a test can count its calls


async def counting(request: dict[str, Any]) -> dict[str, Any]:
    global calls
    calls += 1
    return summarise(request)


def hang(request: dict[str, Any]) -> dict[str, Any]:
    time.sleep(3600)
    return summarise(request)


async def hang_async(request: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(3600)
    return summarise(request)
