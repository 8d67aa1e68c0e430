"""The process a synchronous Python oracle runs in: a first line once started, then one reply per request line.

A hung or runaway callable cannot be stopped inside the worker (a thread cannot be killed), so sync
callables run here and the worker kills this process on timeout. Run as
``python -m pipeline_workers.oracles.child``; it exits when its stdin closes (the worker went away).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, BinaryIO

import orjson


def _call(target: str, request: dict[str, Any]) -> dict[str, Any]:
    module_name, _, name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        return {"error": f"cannot import oracle module {module_name!r}: {type(exc).__name__}: {exc}"}
    fn = getattr(module, name, None)
    if not callable(fn):
        return {"error": f"{target} is not a callable"}
    try:
        result = fn(request)
        if inspect.isawaitable(result):
            import asyncio  # only here: it is most of this process's start-up time otherwise

            result = asyncio.run(_await(result))
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)[:300]}
    if hasattr(result, "model_dump"):  # an OracleReply (or another pydantic model)
        result = result.model_dump(mode="json")
    return {"result": result}


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _serve(proto_in: BinaryIO, proto_out: BinaryIO) -> None:
    for line in proto_in:
        message = orjson.loads(line)
        reply = _call(message["target"], message["request"])
        try:
            out = orjson.dumps(reply)
        except TypeError as exc:
            out = orjson.dumps({"error": f"oracle {message['target']} returned a value that is not JSON: {exc}"})
        proto_out.write(out + b"\n")
        proto_out.flush()


def main() -> None:
    # The protocol owns the real stdout; anything the oracle prints goes to stderr instead.
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Ready: the worker counts a process as started only now, so start-ups do not pile up on the CPU.
    proto_out.write(b'{"ready":true}\n')
    proto_out.flush()
    _serve(sys.stdin.buffer, proto_out)


if __name__ == "__main__":
    main()
