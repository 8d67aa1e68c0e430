"""The HTTP/WebSocket API (FastAPI)."""
