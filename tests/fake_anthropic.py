"""A stand-in for the Anthropic Messages API on a real local port, for tests and benchmarks.

It answers `POST /v1/messages` as the API does (message bodies, error bodies, usage), counts every request it
received (what the provider would bill, failed or not), can answer with planned errors first, can hold
requests unanswered (a process killed mid-call), and does Anthropic's prompt-cache accounting: the prefix up
to the last block marked `cache_control` is cached when it has at least `min_cacheable_tokens` tokens (1024
for Sonnet); the first request writes it (`cache_creation_input_tokens`), later ones within the TTL read it
(`cache_read_input_tokens`), the rest is `input_tokens`. Tokens are counted as characters / 4, rounded up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

OVERLOADED = (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


def tokens(text: str) -> int:
    return -(-len(text) // 4)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))


@dataclass
class FakeAnthropic:
    min_cacheable_tokens: int = 1024
    cache_ttl_s: float = 300.0
    plan: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # answered first, in order
    requests: list[dict[str, Any]] = field(default_factory=list)  # every request received (billed or not)
    keys: list[str] = field(default_factory=list)  # the API key each request carried
    proxy_auth: list[str | None] = field(default_factory=list)  # a request's Proxy-Authorization (when it is one)
    answered: int = 0
    held: int = 0  # requests waiting on `release`
    release: asyncio.Event | None = None  # when set to an unset Event, requests `hold` picks wait for it
    hold: Callable[[dict[str, Any]], bool] = lambda body: True
    # Decides a request's answer before the plan: an error (status, body), or None to answer normally.
    decide: Callable[[dict[str, Any]], tuple[int, dict[str, Any]] | None] = lambda body: None
    score_output_tokens: int | None = None  # reported for verdicts instead of the answer's length
    _cache: dict[str, float] = field(default_factory=dict)
    url: str = ""

    async def messages(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        self.keys.append(request.headers.get("x-api-key", bearer))
        self.proxy_auth.append(request.headers.get("proxy-authorization"))
        if self.release is not None and not self.release.is_set() and self.hold(body):
            self.held += 1
            await self.release.wait()
        decided = self.decide(body)
        if decided is not None or self.plan:
            status, error = decided if decided is not None else self.plan.pop(0)
            return JSONResponse(error, status_code=status, headers={"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy"})
        self.answered += 1
        return JSONResponse(self.answer(body))

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = _text(body["messages"][0]["content"])
        output_tokens: int | None = None
        if is_question(body):
            text = json.dumps({"question": "What does truncate return when the text is longer than the width?"})
        else:
            claims = re.search(r"<key_claims>\n(.*?)\n</key_claims>", prompt, re.S)
            numbered = [line for line in (claims.group(1) if claims else "").splitlines() if re.match(r"\d+\. ", line)]
            text = json.dumps(
                {
                    "claims": [{"claim": line.split(". ", 1)[1], "supported": True} for line in numbered],
                    "changes": [{"change": "the main change", "surfaced": True}],
                    "score": 0.75,
                }
            )
            output_tokens = self.score_output_tokens
        return {
            "id": f"msg_01{hashlib.sha256(json.dumps(body).encode()).hexdigest()[:22]}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": self.usage(body) | {"output_tokens": output_tokens or tokens(text), "service_tier": "standard"},
        }

    def usage(self, body: dict[str, Any]) -> dict[str, int]:
        """Input token accounting with the prompt cache (system blocks, then message blocks, in order)."""
        system = body.get("system") or []
        blocks: list[dict[str, Any]] = [{"text": system}] if isinstance(system, str) else list(system)
        for message in body["messages"]:
            content = message["content"]
            blocks += [{"text": content}] if isinstance(content, str) else list(content)
        total = sum(tokens(b.get("text", "")) for b in blocks)
        marked = [i for i, b in enumerate(blocks) if b.get("cache_control")]
        if marked:
            prefix = blocks[: marked[-1] + 1]
            prefix_tokens = sum(tokens(b.get("text", "")) for b in prefix)
            if prefix_tokens >= self.min_cacheable_tokens:
                key = hashlib.sha256((body["model"] + json.dumps([b.get("text") for b in prefix])).encode()).hexdigest()
                now = time.monotonic()
                hit = self._cache.get(key, -1e18) + self.cache_ttl_s > now
                self._cache[key] = now  # a read refreshes the TTL
                read, written = (prefix_tokens, 0) if hit else (0, prefix_tokens)
                return {
                    "input_tokens": total - prefix_tokens,
                    "cache_read_input_tokens": read,
                    "cache_creation_input_tokens": written,
                }
        return {"input_tokens": total, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}


def is_question(body: dict[str, Any]) -> bool:
    """A follow-up-question request (else a scoring one)."""
    return "write ONE specific question" in _text(body["messages"][0]["content"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serving(fake: FakeAnthropic) -> AsyncIterator[FakeAnthropic]:
    """Serve `fake` on a free loopback port (its `url` is the base URL to give the judge's client)."""
    app = Starlette(routes=[Route("/v1/messages", fake.messages, methods=["POST"])])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            server.should_exit = True
            await task
            raise RuntimeError("the fake Anthropic server did not start")
        await asyncio.sleep(0.01)
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        if fake.release is not None:
            fake.release.set()
        server.should_exit = True
        await task
