"""Continuous load through the API, remembering what each request was answered.

Each logical request has its own `construct_id` (`chaos-<n>`), so a run found in the log can be traced to
the request that caused it. Requests with an Idempotency-Key are retried with the same key after a 5xx or a
lost answer, as the README tells clients to; requests without one are sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

SAMPLE_ORACLE = ("pipeline_workers.oracles.sample", "summarise")
RETRY_FOR_S = 120.0  # how long a keyed request keeps retrying through faults


def run_body(construct_id: str, *, limit: int) -> dict[str, Any]:
    """The one input every chaos run uses (bundled sample repo and oracle, offline scorer)."""
    return {
        "repo_url": "sample",
        "construct_id": construct_id,
        "oracle_type": "python",
        "oracle_module": SAMPLE_ORACLE[0],
        "oracle_callable": SAMPLE_ORACLE[1],
        "limit": limit,
        "min_replays": 1,
    }


@dataclass
class Request:
    n: int
    construct_id: str
    key: str | None
    attempts: list[str] = field(default_factory=list)  # "201", "503", "ConnectError", ...
    run_id: str | None = None
    status: int | None = None  # the accepting answer: 201, or 200 for a repeated key
    accepted_at: float | None = None

    @property
    def ambiguous(self) -> bool:
        """An attempt whose answer was lost after it may have been sent: the run may exist unbeknown to us."""
        return any(a in AMBIGUOUS for a in self.attempts)


# Errors after which the request may have reached the API (a connect error means it never left).
AMBIGUOUS = frozenset({"ReadError", "RemoteProtocolError", "ReadTimeout", "WriteError", "WriteTimeout", "PoolTimeout"})


@dataclass
class Load:
    api_url: str
    token: str
    rate_per_s: float
    keyed_fraction: float
    limit: int
    rng: random.Random
    requests: list[Request] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self) -> None:
        """Submit at rate_per_s (Poisson arrivals) until stop(); then wait for requests still retrying."""
        async with httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=httpx.Timeout(10.0),
            limits=httpx.Limits(max_connections=32),
        ) as http:
            while not self._stop.is_set():
                request = self._next()
                task = asyncio.create_task(self._submit(http, request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.rng.expovariate(self.rate_per_s))
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()

    def _next(self) -> Request:
        n = len(self.requests)
        key = f"chaos-key-{n}-{self.rng.getrandbits(32):08x}" if self.rng.random() < self.keyed_fraction else None
        request = Request(n=n, construct_id=f"chaos-{n}", key=key)
        self.requests.append(request)
        return request

    async def _submit(self, http: httpx.AsyncClient, request: Request) -> None:
        headers = {"Idempotency-Key": request.key} if request.key else {}
        body = run_body(request.construct_id, limit=self.limit)
        deadline = time.monotonic() + RETRY_FOR_S
        delay = 0.2
        while True:
            try:
                response = await http.post("/api/v1/verification/runs", json=body, headers=headers)
            except httpx.HTTPError as exc:
                request.attempts.append(type(exc).__name__)
            else:
                request.attempts.append(str(response.status_code))
                if response.status_code in (200, 201):
                    request.run_id = str(response.json()["run_id"])
                    request.status = response.status_code
                    request.accepted_at = time.monotonic()
                    return
                if response.status_code < 500:
                    return  # refused for good (a client error): not accepted, never retried
            if request.key is None or time.monotonic() > deadline:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def accepted(self) -> list[Request]:
        return [r for r in self.requests if r.run_id is not None]

    def summary(self) -> dict[str, Any]:
        answers: dict[str, int] = {}
        for request in self.requests:
            for attempt in request.attempts:
                answers[attempt] = answers.get(attempt, 0) + 1
        return {
            "requests": len(self.requests),
            "keyed": sum(1 for r in self.requests if r.key),
            "accepted": len(self.accepted()),
            "accepted_after_retry": sum(1 for r in self.accepted() if len(r.attempts) > 1),
            "not_accepted": sum(1 for r in self.requests if r.run_id is None),
            "ambiguous_unkeyed": sum(1 for r in self.requests if r.run_id is None and r.key is None and r.ambiguous),
            "answers": dict(sorted(answers.items())),
        }
