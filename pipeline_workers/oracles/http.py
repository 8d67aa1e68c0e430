# ruff: noqa: A005 - the module name is part of the agreed layout; it is only ever imported absolutely
"""Oracles reached over HTTP(S), behind an SSRF guard.

The guard resolves the host and refuses non-public addresses, both when a run is requested and again
on every invocation, because DNS can change in between (rebinding). The request is then sent to a checked
IP itself, so a second, different DNS answer during connect cannot redirect it to an internal port:
for ``http`` with the original Host header; for ``https`` also with the host name as TLS SNI and as the
name the certificate is verified against (httpcore's ``sni_hostname``), and ``Connection: close``, because
the client pools connections by IP and one verified for another host name must never carry this request.
Addresses are tried in the resolver's order while the connection fails (nothing was sent yet).
Redirects are never followed. The client must not use proxies from the environment (see
``pipeline_workers.pipeline.outbound_client``): a proxy would connect wherever its own DNS says.

Calls to one oracle endpoint adapt their concurrency (``adaptive_limit``): 429/503/529 and ``retry-after``
lower it; such an answer means the call was not served, so it is made again while the timeout allows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import orjson

from echelon_platform.adapters.adaptive_limit import MAX_PAUSE_S, LimiterRegistry, Slot, retry_after_seconds
from echelon_platform.adapters.url_guard import (
    Resolver,
    checked_addresses,
    forbidden_reason,
    split_url,
    system_resolver,
)
from echelon_platform.domain.values import GroundTruthRecord, OracleReply
from echelon_platform.errors import OracleError, RequestRejected
from pipeline_workers.oracles.base import build_request, parse_reply_bytes

DEFAULT_MAX_RESPONSE_BYTES = 1_000_000
OVERLOAD_STATUS = frozenset({429, 503, 529})
MAX_OVERLOAD_ATTEMPTS = 3
# How long a call may queue for a slot of its endpoint (at least; 4x its timeout when longer) before the
# replay is put back for later: nothing was sent, so it is not a failed attempt.
MIN_QUEUE_WAIT_S = 60.0
# Headers the transport owns; a construct's configuration must not be able to override them.
_RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})


@dataclass(frozen=True)
class _Target:
    url: str
    headers: dict[str, str]
    extensions: dict[str, str]


class HttpOracle:
    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        timeout_s: float,
        client: httpx.AsyncClient,
        allow_private: bool,
        *,
        resolver: Resolver | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        limits: LimiterRegistry | None = None,
    ) -> None:
        self._parts = split_url(url)  # static part of the guard now; DNS is checked per invocation
        self._url = url
        self._headers = _clean_headers(headers)
        self._secrets = [v for v in self._headers.values() if len(v) >= 4]
        self._timeout = timeout_s
        self._client = client
        self._allow_private = allow_private
        self._resolver = resolver or system_resolver
        self._max_bytes = max_response_bytes
        self._limiter = None
        if limits is not None:
            origin = f"{self._parts.scheme}://{self._parts.netloc}"
            self._limiter = limits.for_endpoint(origin, classify=_overloaded_when_slow)

    def __repr__(self) -> str:  # never show headers: they usually carry credentials
        return f"HttpOracle(url={self._url!r}, timeout_s={self._timeout:g})"

    async def invoke(self, record: GroundTruthRecord, follow_up_question: str) -> OracleReply:
        targets = await self._targets()
        body = orjson.dumps(build_request(record, follow_up_question))
        try:
            data, status = await self._limited_post(targets, body)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise OracleError(f"oracle timed out after {self._timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise OracleError(f"oracle request failed: {type(exc).__name__}: {self._redact(str(exc))}") from exc
        if not 200 <= status < 300:
            note = " (redirects are not followed)" if 300 <= status < 400 else ""
            raise OracleError(f"oracle returned HTTP {status}{note}: {self._excerpt(data)}")
        return parse_reply_bytes(data)

    async def _timed_post(self, targets: list[_Target], body: bytes) -> tuple[bytes, int, httpx.Headers]:
        async with asyncio.timeout(self._timeout):
            return await self._post(targets, body)

    async def _limited_post(self, targets: list[_Target], body: bytes) -> tuple[bytes, int]:
        """The call, in a slot of the endpoint's limit; the timeout counts from the slot, not the queue."""
        if self._limiter is None:
            data, status, _ = await self._timed_post(targets, body)
            return data, status
        queue_s = max(MIN_QUEUE_WAIT_S, 4 * self._timeout)
        for attempt in range(1, MAX_OVERLOAD_ATTEMPTS + 1):
            async with self._limiter.slot(wait_s=queue_s) as slot:
                data, status, headers = await self._timed_post(targets, body)
                slot.headers(headers)
                if status in OVERLOAD_STATUS or status >= 500:  # too many, or failing under load
                    slot.overloaded(retry_after_seconds(headers.get("retry-after")), rate_limited=status == 429)
            if status not in OVERLOAD_STATUS or attempt == MAX_OVERLOAD_ATTEMPTS:
                break
            # Not served: wait as asked (the timeout around the call bounds it) and ask again.
            await asyncio.sleep(min(MAX_PAUSE_S, retry_after_seconds(headers.get("retry-after")) or 0.5 * attempt))
        return data, status

    async def _post(self, targets: list[_Target], body: bytes) -> tuple[bytes, int, httpx.Headers]:
        for attempt, target in enumerate(targets, start=1):
            try:
                async with self._client.stream(
                    "POST",
                    target.url,
                    content=body,
                    headers=target.headers,
                    timeout=self._timeout,
                    follow_redirects=False,
                    extensions=target.extensions,
                ) as resp:
                    return await self._read(resp), resp.status_code, resp.headers
            except httpx.ConnectError:
                # Not connected, so nothing was sent: the next checked address may answer.
                if attempt == len(targets):
                    raise
        raise AssertionError("no oracle targets")  # checked_addresses never returns an empty list

    async def _targets(self) -> list[_Target]:
        """One request per checked address, after re-running the guard."""
        addresses = await checked_addresses(self._parts, self._allow_private, self._resolver)
        headers = {**self._headers, "Content-Type": "application/json", "Accept": "application/json"}
        host = self._parts.hostname or ""
        if forbidden_reason(host) != "not an IP address":  # an IP literal: nothing to pin
            return [_Target(self._url, headers, {})]
        headers["Host"] = self._parts.netloc
        extensions: dict[str, str] = {}
        if self._parts.scheme.lower() == "https":
            # Certificate verified for the host name, not the IP; no connection shared with other names.
            extensions["sni_hostname"] = host
            headers["Connection"] = "close"
        url = httpx.URL(self._url)
        return [
            _Target(str(url.copy_with(host=address)), headers, extensions)
            for address in dict.fromkeys(a.split("%", 1)[0] for a in addresses)
        ]

    async def _read(self, resp: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise OracleError(f"oracle response exceeds {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _excerpt(self, data: bytes) -> str:
        text = " ".join(data[:400].decode("utf-8", errors="replace").split())
        return self._redact(text)[:200] or "(empty body)"

    def _redact(self, text: str) -> str:
        # An echo endpoint could reflect our auth headers back; keep them out of error messages.
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _overloaded_when_slow(exc: BaseException, slot: Slot) -> None:
    """An oracle that times out is past what it can serve: fewer calls at once, as for a 429."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        slot.overloaded(None)
    else:
        slot.failed()


def _clean_headers(headers: Mapping[str, str]) -> dict[str, str]:
    clean: dict[str, str] = {}
    for name, value in headers.items():
        if any(c in name for c in "\r\n:") or not name.strip():
            raise RequestRejected(f"oracle header name {name!r} is invalid")
        if "\r" in value or "\n" in value:
            raise RequestRejected(f"oracle header {name!r} has an invalid value")  # value never echoed
        if name.lower() not in _RESERVED_HEADERS:
            clean[name] = value
    return clean
