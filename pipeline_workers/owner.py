"""The user whose message a stage task is handling, for shares kept below the stage (oracle processes)."""

from __future__ import annotations

from contextvars import ContextVar

# Set by the stage worker in each message's task; None outside one (tests, scripts).
current_owner: ContextVar[str | None] = ContextVar("current_owner", default=None)
