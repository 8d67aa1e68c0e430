"""Oracle calls at the socket boundary: HTTPS goes to the address the guard checked (certificate still
verified for the host name), and proxies from the environment are not used."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from echelon_platform.domain.values import GroundTruthRecord
from echelon_platform.errors import OracleError
from pipeline_workers.oracles.http import HttpOracle
from pipeline_workers.pipeline import outbound_client

from .helpers import FakeDns

REPLY = {"summary": "s", "key_claims": ["c"], "follow_up_response": "a"}


@dataclass
class Pki:
    ca_pem: bytes
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())


def make_pki(tmp: Path, name: str) -> Pki:
    """A private CA and a server certificate for `name` only (not for any IP)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Pki(ca.public_bytes(serialization.Encoding.PEM), cert_file, key_file)


@dataclass
class Seen:
    sni: list[str | None] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)


@asynccontextmanager
async def oracle_server(pki: Pki | None = None) -> AsyncIterator[tuple[int, Seen]]:
    """A real HTTP(S) oracle on 127.0.0.1 that records the SNI name and Host header of each request."""
    seen = Seen()
    context = None
    if pki is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.cert_file, pki.key_file)
        context.sni_callback = lambda _sock, name, _ctx: seen.sni.append(name)  # type: ignore[assignment,func-returns-value]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line)
            headers = {k.lower(): v for k, v in headers.items()}
            seen.hosts.append(headers.get("host", ""))
            await reader.readexactly(int(headers.get("content-length", "0")))
            body = orjson.dumps(REPLY)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # a client that gave up (e.g. it refused our certificate)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield port, seen
    finally:
        server.close()
        await server.wait_closed()


def oracle(url: str, client: httpx.AsyncClient, dns: FakeDns) -> HttpOracle:
    # Loopback is where the test server is: private targets allowed, but still resolved, checked and pinned.
    return HttpOracle(url, {}, 5.0, client, allow_private=True, resolver=dns)


async def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
    tmp_path: Path, record: GroundTruthRecord
) -> None:
    # "oracle.test" resolves nowhere but in the guard's resolver: only a pinned connection can reach it.
    pki = make_pki(tmp_path, "oracle.test")
    dns = FakeDns({"oracle.test": ["127.0.0.1"]})
    async with oracle_server(pki) as (port, seen), httpx.AsyncClient(verify=pki.client_context()) as client:
        reply = await oracle(f"https://oracle.test:{port}/summarise", client, dns).invoke(record, "q?")
    assert reply.summary == "s"
    assert seen.sni == ["oracle.test"]  # TLS names the host, not the IP
    assert seen.hosts == [f"oracle.test:{port}"]
    assert dns.lookups == ["oracle.test"]


async def test_a_certificate_for_another_name_is_refused(tmp_path: Path, record: GroundTruthRecord) -> None:
    pki = make_pki(tmp_path, "other.test")
    dns = FakeDns({"oracle.test": ["127.0.0.1"]})
    async with oracle_server(pki) as (port, seen), httpx.AsyncClient(verify=pki.client_context()) as client:
        with pytest.raises(OracleError, match="CERTIFICATE_VERIFY_FAILED"):
            await oracle(f"https://oracle.test:{port}/summarise", client, dns).invoke(record, "q?")
    assert seen.hosts == []  # nothing was sent over the refused connection


async def test_the_next_checked_address_is_tried_when_one_refuses_connections(
    tmp_path: Path, record: GroundTruthRecord
) -> None:
    pki = make_pki(tmp_path, "oracle.test")
    async with oracle_server(pki) as (port, seen), httpx.AsyncClient(verify=pki.client_context()) as client:
        dns = FakeDns({"oracle.test": ["127.0.0.2", "127.0.0.1"]})  # nothing listens on 127.0.0.2
        reply = await oracle(f"https://oracle.test:{port}/summarise", client, dns).invoke(record, "q?")
    assert reply.summary == "s" and seen.sni == ["oracle.test"]


async def test_proxies_from_the_environment_are_not_used(
    monkeypatch: pytest.MonkeyPatch, record: GroundTruthRecord
) -> None:
    async with oracle_server() as (dead_port, _):
        pass  # closed again: a proxy there refuses every connection
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{dead_port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    dns = FakeDns({"oracle.test": ["127.0.0.1"]})
    async with oracle_server() as (port, seen), outbound_client() as client:
        reply = await oracle(f"http://oracle.test:{port}/summarise", client, dns).invoke(record, "q?")
    assert reply.summary == "s"
    assert seen.hosts == [f"oracle.test:{port}"]
