"""structlog configuration: one JSON object per line, with whatever context is bound (request_id,
topic, correlationId, eventId, ...). Entry points call `configure_logging` once; importing does nothing.

Standard-library loggers (uvicorn, nats, asyncio) are routed through the same renderer, so every line a
process writes is JSON; those lines also carry `logger`.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
from typing import Any, TextIO

import orjson
import structlog


def _dumps(data: Any, **_: Any) -> str:
    return orjson.dumps(data, default=str).decode()


class TickBatchedStream:
    """A text stream that writes the lines logged during one turn of the event loop in one write.

    A request logs two or three lines; written and flushed one by one, each cost a system call on the hot
    path. Here `flush()` (structlog calls it after every line) defers the real write to the end of the
    current turn of the running loop (or does it at once outside a loop, from another thread, or when many
    lines are waiting). What a SIGKILL can lose is the current turn's lines; a normal exit writes them."""

    MAX_WAITING = 256

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._waiting: list[str] = []
        self._scheduled = False
        self._lock = threading.Lock()
        atexit.register(self.drain)

    def write(self, text: str) -> int:
        self._waiting.append(text)
        return len(text)

    def flush(self) -> None:
        if len(self._waiting) >= self.MAX_WAITING:
            self.drain()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: nothing to batch with
            self.drain()
            return
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.drain)

    def drain(self) -> None:
        with self._lock:
            self._scheduled = False
            if not self._waiting:
                return
            text, self._waiting = "".join(self._waiting), []
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: logging must not take the process down
                pass

    def isatty(self) -> bool:
        return self._stream.isatty()


def configure_logging(
    level: str = "INFO",
    *,
    json: bool = True,
    stream: TextIO | None = None,
    cache: bool = True,
    batched: bool = False,
) -> None:
    """Configure structlog and the stdlib root logger. `json=False` renders for humans (a terminal);
    `cache=False` lets a later call reconfigure loggers already used (tests); `batched=True` writes each turn
    of the event loop's lines at once (`TickBatchedStream`: the long-running roles)."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps) if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    out: Any = stream or sys.stderr
    if batched:
        out = TickBatchedStream(out)
    # structlog's own loggers write straight to the stream (no LogRecord per line: this is the hot path).
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.WriteLoggerFactory(file=out),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # uvicorn installs its own handlers; let its records reach the JSON handler instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
