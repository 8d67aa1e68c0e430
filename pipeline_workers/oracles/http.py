# ruff: noqa: A005 - the module name is part of the agreed layout; it is only ever imported absolutely
"""Oracles reached over HTTP(S), behind an SSRF guard.

The guard resolves the host and refuses non-public addresses, both when a run is requested and again
on every invocation, because DNS can change in between (rebinding). For plain ``http`` the request is
then sent to the checked IP itself (Host header kept), so a second, different DNS answer during
connect cannot redirect it. For ``https`` the connection is left to the client: an attacker's
hostname cannot present a valid certificate from an internal service, so TLS verification closes
the same gap without pinning. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import httpx
import orjson

from echelon_platform.adapters.url_guard import Resolver, checked_addresses, split_url, system_resolver
from echelon_platform.domain.values import GroundTruthRecord, OracleReply
from echelon_platform.errors import OracleError, RequestRejected
from pipeline_workers.oracles.base import build_request, parse_reply_bytes

DEFAULT_MAX_RESPONSE_BYTES = 1_000_000
# Headers the transport owns; a construct's configuration must not be able to override them.
_RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})


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

    def __repr__(self) -> str:  # never show headers: they usually carry credentials
        return f"HttpOracle(url={self._url!r}, timeout_s={self._timeout:g})"

    async def invoke(self, record: GroundTruthRecord, follow_up_question: str) -> OracleReply:
        url, headers = await self._target()
        body = orjson.dumps(build_request(record, follow_up_question))
        try:
            async with asyncio.timeout(self._timeout):
                async with self._client.stream(
                    "POST",
                    url,
                    content=body,
                    headers=headers,
                    timeout=self._timeout,
                    follow_redirects=False,
                ) as resp:
                    data = await self._read(resp)
                    status = resp.status_code
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise OracleError(f"oracle timed out after {self._timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise OracleError(f"oracle request failed: {type(exc).__name__}: {self._redact(str(exc))}") from exc
        if not 200 <= status < 300:
            note = " (redirects are not followed)" if 300 <= status < 400 else ""
            raise OracleError(f"oracle returned HTTP {status}{note}: {self._excerpt(data)}")
        return parse_reply_bytes(data)

    async def _target(self) -> tuple[str, dict[str, str]]:
        """URL and headers for one request, after re-running the guard."""
        addresses = await checked_addresses(self._parts, self._allow_private, self._resolver)
        headers = {**self._headers, "Content-Type": "application/json", "Accept": "application/json"}
        if self._allow_private or self._parts.scheme.lower() == "https":
            return self._url, headers
        # Plain http: connect to the address we just checked, with the original Host header.
        pinned = httpx.URL(self._url).copy_with(host=addresses[0].split("%", 1)[0])
        headers["Host"] = self._parts.netloc
        return str(pinned), headers

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
