"""An Anthropic-compatible judge over HTTP for tests and benchmarks: real sockets, the Messages API's
payloads, and a provider's limits, with counters.

    python -m tests.fake_judge --port 8911 [--latency 1.0] [--concurrency N] [--rpm R] [--burst B]

- every call takes ``latency`` seconds;
- ``concurrency``: a call that would be above N in flight is refused at once with 429 + ``retry-after: 1``
  (``rate_limit_error``), as a provider's concurrency limit does;
- ``rpm``: requests per minute as a token bucket (``burst`` tokens, default 10 s worth, refilled
  continuously); a call without a token gets 429 + ``retry-after`` (whole seconds, rounded up) and
  ``anthropic-ratelimit-requests-remaining: 0`` / ``-reset``; successful answers carry the headers too;
- ``GET /stats``: calls served, refused, the peak in flight (served) and the peak arriving (all);
  ``POST /limits`` {"concurrency": n, "rpm": r, "burst": b, "latency": s, "reset": true} changes the limits
  mid-run (the provider lowering them); ``reset`` starts over with a full bucket and zero counters.

A follow-up-question prompt is answered with a question, a judge prompt with a verdict for up to 50 claims.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

QUESTION = {"question": "Which callers of the changed function need updating, and why?"}
VERDICT = {
    "claims": [{"claim": f"claim {i}", "supported": i % 3 != 0} for i in range(50)],
    "changes": [
        {"change": "New helper added", "surfaced": True},
        {"change": "Exports updated", "surfaced": False},
    ],
    "score": 0.75,
}


class Provider:
    def __init__(self, *, latency_s: float, concurrency: int | None, rpm: float | None, burst: float | None) -> None:
        self.latency_s = latency_s
        self.concurrency = concurrency
        self.rpm = rpm
        self.burst = burst
        self.tokens = self._capacity()
        self.refilled = time.monotonic()
        self.in_flight = 0
        self.arriving = 0
        self.served = 0
        self.refused = 0
        self.peak_in_flight = 0
        self.peak_arriving = 0
        self.by_model: dict[str, int] = {}
        self.first_at: float | None = None
        self.last_at: float | None = None

    def _capacity(self) -> float:
        if self.rpm is None:
            return math.inf
        return self.burst if self.burst is not None else max(1.0, self.rpm / 6)

    def _refill(self) -> None:
        now = time.monotonic()
        if self.rpm is not None:
            self.tokens = min(self._capacity(), self.tokens + (now - self.refilled) * self.rpm / 60)
        self.refilled = now

    def _rate_headers(self) -> dict[str, str]:
        if self.rpm is None:
            return {}
        missing = max(0.0, 1 - self.tokens)
        reset = datetime.now(UTC) + timedelta(seconds=missing * 60 / self.rpm)
        return {
            "anthropic-ratelimit-requests-limit": str(int(self.rpm)),
            "anthropic-ratelimit-requests-remaining": str(max(0, math.floor(self.tokens))),
            "anthropic-ratelimit-requests-reset": reset.isoformat().replace("+00:00", "Z"),
        }

    def stats(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "refused": self.refused,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "peak_arriving": self.peak_arriving,
            "concurrency": self.concurrency,
            "rpm": self.rpm,
            "by_model": self.by_model,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "cpu_s": time.process_time(),  # this process's CPU so far: a benchmark reports the fake's own share
        }

    async def messages(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.arriving += 1
        self.peak_arriving = max(self.peak_arriving, self.arriving)
        try:
            self._refill()
            if self.concurrency is not None and self.in_flight >= self.concurrency:
                return self._refuse(1.0, f"more than {self.concurrency} concurrent requests")
            if self.rpm is not None and self.tokens < 1:
                wait = (1 - self.tokens) * 60 / self.rpm
                return self._refuse(float(math.ceil(wait)), f"more than {self.rpm:g} requests per minute")
            self.tokens -= 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.first_at = self.first_at or time.time()
            try:
                await asyncio.sleep(self.latency_s)
            finally:
                self.in_flight -= 1
            self.served += 1
            model = str(body.get("model", ""))
            self.by_model[model] = self.by_model.get(model, 0) + 1
            self.last_at = time.time()
            prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
            answer = VERDICT if "<key_claims>" in prompt else QUESTION
            return Response(
                orjson.dumps(_message(orjson.dumps(answer).decode(), body.get("model", "claude-sonnet-4-6"))),
                media_type="application/json",
                headers={"request-id": f"req_{self.served:024d}", **self._rate_headers()},
            )
        finally:
            self.arriving -= 1

    def _refuse(self, retry_after: float, why: str) -> Response:
        self.refused += 1
        error = {"type": "error", "error": {"type": "rate_limit_error", "message": f"Rate limited: {why}"}}
        headers = {"retry-after": f"{retry_after:g}", **self._rate_headers()}
        return Response(orjson.dumps(error), status_code=429, media_type="application/json", headers=headers)

    async def change(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        if "latency" in body:
            self.latency_s = body["latency"]
        if "burst" in body:
            self.burst = body["burst"]
        if "concurrency" in body:
            self.concurrency = body["concurrency"]
        if "rpm" in body:
            self.rpm = body["rpm"]
            self.tokens = min(self.tokens, self._capacity())
        if body.get("reset"):  # a fresh provider: a full bucket, counters at zero
            self.tokens = self._capacity()
            self.served = self.refused = 0
            self.by_model = {}
            self.first_at = self.last_at = None
        # Peaks from here on: what the callers do under the new limits.
        self.peak_in_flight, self.peak_arriving = self.in_flight, self.arriving
        return Response(orjson.dumps(self.stats()), media_type="application/json")

    async def show(self, request: Request) -> Response:
        return Response(orjson.dumps(self.stats()), media_type="application/json")


def _message(text: str, model: str) -> dict[str, Any]:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 1200,
            "output_tokens": 180,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }


def app(provider: Provider) -> Starlette:
    async def healthz(request: Request) -> Response:
        return Response(b"ok")

    return Starlette(
        routes=[
            Route("/v1/messages", provider.messages, methods=["POST"]),
            Route("/stats", provider.show, methods=["GET"]),
            Route("/limits", provider.change, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--rpm", type=float, default=None)
    parser.add_argument("--burst", type=float, default=None)
    args = parser.parse_args()
    provider = Provider(latency_s=args.latency, concurrency=args.concurrency, rpm=args.rpm, burst=args.burst)
    uvicorn.run(app(provider), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
