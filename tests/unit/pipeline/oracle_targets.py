"""Sync oracle callables for tests. A real module: sync oracles run in a child process that imports it."""

from __future__ import annotations

import os
import time
from typing import Any


def sync_oracle(request: dict[str, Any]) -> dict[str, Any]:
    print("oracle chatter on stdout must not break the protocol")
    return {
        "summary": f"About {request['pr']['title']}",
        "key_claims": ["x"],
        "follow_up_response": "y",
        "metadata": {"pid": os.getpid(), "request": request},
    }


def brief_sync(request: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.02)
    return sync_oracle(request)


def slow_sync(request: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.3)
    return {}


def hang(request: dict[str, Any]) -> dict[str, Any]:
    time.sleep(3600)
    return {}


def returns_garbage(request: dict[str, Any]) -> Any:
    return ["not", "a", "dict"]


def returns_unserialisable(request: dict[str, Any]) -> Any:
    return {"summary": object()}


def exits(request: dict[str, Any]) -> Any:
    os._exit(3)


not_callable = 42
