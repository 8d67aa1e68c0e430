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
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import SplitResult, urlsplit

import httpx
import orjson

from echelon_platform.errors import OracleError, OracleRefused, RequestRejected
from pipeline_workers.models import GroundTruthRecord, OracleReply
from pipeline_workers.oracles.base import build_request, parse_reply_bytes

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_RESPONSE_BYTES = 1_000_000
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Headers the transport owns; a construct's configuration must not be able to override them.
_RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the OS resolver returns for host (IPv4 and IPv6)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _split(url: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise OracleRefused(f"oracle URL must use http or https, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise OracleRefused("oracle URL has no host")
    if parts.username is not None or parts.password is not None:
        # Credentials in a URL end up in logs and error messages; headers are kept secret instead.
        raise OracleRefused("oracle URL must not contain credentials: configure them as headers")
    try:
        parts.port  # noqa: B018 - raises ValueError for an out-of-range or non-numeric port
    except ValueError as exc:
        raise OracleRefused("oracle URL has an invalid port") from exc
    return parts


def forbidden_reason(address: str) -> str | None:
    """Why an IP literal is not a public unicast address, or None when it is."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    # Addresses that merely wrap an IPv4 address are judged by the address they wrap.
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (not ip.is_global, "not globally routable"),
    )
    return next((reason for hit, reason in checks if hit), None)


async def _checked_addresses(parts: SplitResult, allow_private: bool, resolver: Resolver) -> list[str]:
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    if forbidden_reason(host) != "not an IP address":
        addresses = [host]  # an IP literal: nothing to resolve
    else:
        try:
            addresses = await resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise OracleError(f"oracle host {host!r} does not resolve") from exc
        if not addresses:
            raise OracleError(f"oracle host {host!r} does not resolve")
    if not allow_private:
        # Every answer must be public: the client could connect to any one of them.
        for address in addresses:
            reason = forbidden_reason(address)
            if reason is not None:
                raise OracleRefused(
                    f"oracle host {host!r} resolves to {address} ({reason}); private network targets "
                    "are refused unless ECHELON_ALLOW_PRIVATE_ORACLES is enabled"
                )
    return addresses


async def check_url_allowed(url: str, allow_private: bool, *, resolver: Resolver | None = None) -> None:
    """Request-time check of an oracle URL: OracleRefused for a bad scheme or non-public target."""
    await _checked_addresses(_split(url), allow_private, resolver or system_resolver)


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
        self._parts = _split(url)  # static part of the guard now; DNS is checked per invocation
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
        addresses = await _checked_addresses(self._parts, self._allow_private, self._resolver)
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
