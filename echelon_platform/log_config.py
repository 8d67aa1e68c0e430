"""structlog configuration: one JSON object per line, with whatever context is bound (request_id,
topic, correlationId, eventId, ...). Entry points call `configure_logging` once; importing does nothing.

Standard-library loggers (uvicorn, nats, asyncio) are routed through the same renderer, so every line a
process writes is JSON; those lines also carry `logger`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog


def _dumps(data: Any, **_: Any) -> str:
    return orjson.dumps(data, default=str).decode()


def configure_logging(
    level: str = "INFO", *, json: bool = True, stream: TextIO | None = None, cache: bool = True
) -> None:
    """Configure structlog and the stdlib root logger. `json=False` renders for humans (a terminal);
    `cache=False` lets a later call reconfigure loggers already used (tests)."""
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
    out = stream or sys.stderr
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
