"""Fields a route adds to its request's access line (`http.request`, written by api/edge.py)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

# The edge sets a fresh dict per request; a route in the same task fills it.
ACCESS_FIELDS: ContextVar[dict[str, Any] | None] = ContextVar("echelon_access_fields", default=None)


def note_on_access_line(fields: dict[str, Any]) -> bool:
    """Put `fields` on this request's access line; False outside a request or once it holds some already."""
    noted = ACCESS_FIELDS.get()
    if noted is None or noted:
        return False
    noted.update(fields)
    return True
