"""The SSRF guard for oracle URLs: a URL must be http(s) and every address its host resolves to public.

The API checks a URL when a run is requested and the invoke stage again on every call, because DNS can
change in between (rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import SplitResult, urlsplit

from echelon_platform.errors import OracleError, OracleRefused

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the OS resolver returns for host (IPv4 and IPv6)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def split_url(url: str) -> SplitResult:
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


async def checked_addresses(parts: SplitResult, allow_private: bool, resolver: Resolver) -> list[str]:
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
    await checked_addresses(split_url(url), allow_private, resolver or system_resolver)
