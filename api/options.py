"""API tunables, taken from Settings once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from echelon_platform.config import Settings


@dataclass(frozen=True, slots=True)
class ApiOptions:
    runs_per_minute: int = 10  # POST /runs per user per minute
    ratings_per_minute: int = 60  # rating submissions per user per minute
    ws_queue_size: int = 1024  # frames buffered per WebSocket client before coalescing / closing
    ws_heartbeat_s: float = 15.0  # idle time before the server sends a heartbeat frame
    ws_auth_timeout_s: float = 10.0  # time a client has to authenticate and subscribe
    ws_close_timeout_s: float = 10.0  # time a stuck client gets to take its close frame

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiOptions:
        return cls(
            runs_per_minute=settings.runs_per_minute,
            ratings_per_minute=settings.ratings_per_minute,
            ws_queue_size=settings.ws_queue_size,
            ws_heartbeat_s=settings.ws_heartbeat_s,
            ws_auth_timeout_s=settings.ws_auth_timeout_s,
            ws_close_timeout_s=settings.ws_close_timeout_s,
        )
