from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import respx

from echelon_platform.adapters.url_guard import check_url_allowed, forbidden_reason
from echelon_platform.domain.values import GroundTruthRecord
from echelon_platform.errors import OracleError, OracleRefused, RequestRejected
from pipeline_workers.oracles.http import HttpOracle

from .helpers import FakeDns

PUBLIC_IP = "93.184.216.34"
PINNED = f"https://{PUBLIC_IP}/v1/summarise"  # https://oracle.example.com/v1/summarise, at its checked address
SECRET = "Bearer sk-oracle-7f3a9c2e51b84d06"
REPLY = {
    "summary": "Adds truncate() and exports it with word_count.",
    "key_claims": ["Adds function truncate in textkit/text.py", "Exports word_count from textkit"],
    "follow_up_response": "truncate returns the text cut to width with '...' appended.",
    "metadata": {"model": "my-oracle-1"},
}


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


@pytest.fixture
def mock() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def dns() -> FakeDns:
    return FakeDns({"oracle.example.com": [PUBLIC_IP, "2606:2800:220:1:248:1893:25c8:1946"]})


def oracle(
    client: httpx.AsyncClient, dns: FakeDns, url: str = "https://oracle.example.com/v1/summarise", **kw: Any
) -> HttpOracle:
    args: dict[str, Any] = {"headers": {"Authorization": SECRET}, "timeout_s": 2.0, "allow_private": False}
    args.update(kw)
    return HttpOracle(url, client=client, resolver=dns, **args)


async def test_success_sends_the_exact_body_and_headers(
    mock: Any, client: httpx.AsyncClient, dns: FakeDns, record: GroundTruthRecord
) -> None:
    route = mock.post(PINNED).mock(return_value=httpx.Response(200, json=REPLY))
    reply = await oracle(client, dns).invoke(record, "What does truncate return?")

    assert reply.summary == REPLY["summary"]
    assert reply.key_claims == REPLY["key_claims"]
    assert reply.metadata == {"model": "my-oracle-1"}
    request = route.calls.last.request
    assert json.loads(request.content) == {
        "pr": {
            "id": record.id,
            "title": record.title,
            "description": record.description,
            "diff_content": record.diff_content,
            "files_changed": record.files_changed,
        },
        "follow_up_question": "What does truncate return?",
    }
    assert request.headers["authorization"] == SECRET
    assert request.headers["content-type"] == "application/json"
    # Pinned to the checked address; TLS still names (and verifies) the host, on a connection of its own.
    assert request.headers["host"] == "oracle.example.com"
    assert request.extensions["sni_hostname"] == "oracle.example.com"
    assert request.headers["connection"] == "close"
    assert dns.lookups == ["oracle.example.com"]  # resolved (and checked) on invocation


async def test_plain_http_is_pinned_to_the_checked_address(
    mock: Any, client: httpx.AsyncClient, dns: FakeDns, record: GroundTruthRecord
) -> None:
    route = mock.post(f"http://{PUBLIC_IP}:8080/summarise").mock(return_value=httpx.Response(200, json=REPLY))
    await oracle(client, dns, url="http://oracle.example.com:8080/summarise").invoke(record, "q?")
    assert route.calls.last.request.headers["host"] == "oracle.example.com:8080"


async def test_timeout(mock: Any, client: httpx.AsyncClient, dns: FakeDns, record: GroundTruthRecord) -> None:
    mock.post(PINNED).mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(OracleError, match=r"^oracle timed out after 2s$"):
        await oracle(client, dns).invoke(record, "q?")


async def test_slow_oracle_hits_the_overall_deadline(
    mock: Any, client: httpx.AsyncClient, dns: FakeDns, record: GroundTruthRecord
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(1.0)
        return httpx.Response(200, json=REPLY)

    mock.post(PINNED).mock(side_effect=slow)
    with pytest.raises(OracleError, match=r"timed out after 0.05s"):
        await oracle(client, dns, timeout_s=0.05).invoke(record, "q?")


async def test_server_error_reports_status_and_excerpt_without_secrets(
    mock: Any, client: httpx.AsyncClient, dns: FakeDns, record: GroundTruthRecord
) -> None:
    body = f"Internal Server Error: upstream model crashed (request had Authorization: {SECRET})" + "x" * 500
    mock.post(PINNED).mock(return_value=httpx.Response(500, text=body))
    with pytest.raises(OracleError) as info:
        await oracle(client, dns).invoke(record, "q?")
    message = str(info.value)
    assert message.startswith("oracle returned HTTP 500: Internal Server Error: upstream model crashed")
    assert SECRET not in message and "sk-oracle" not in message
    assert len(message) < 260


async def test_redirect_is_not_followed(
    mock: Any, client: httpx.AsyncClient, dns: FakeDns, record: GroundTruthRecord
) -> None:
    target = mock.get("http://169.254.169.254/latest/meta-data/").mock(return_value=httpx.Response(200))
    mock.post(PINNED).mock(
        return_value=httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    )
    with pytest.raises(OracleError, match="HTTP 302 \\(redirects are not followed\\)"):
        await oracle(client, dns).invoke(record, "q?")
    assert target.call_count == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>502 Bad Gateway</html>", "not valid JSON"),
        (b'["summary"]', "must be a JSON object, got array"),
        (b'{"summary": "s", "key_claims": []}', "missing 'follow_up_response'"),
        (b'{"summary": 1, "key_claims": [], "follow_up_response": "a"}', "'summary' must be a string, got number"),
        (b'{"summary": "s", "key_claims": "x", "follow_up_response": "a"}', "'key_claims' must be a list"),
        (b'{"summary": "s", "key_claims": ["a", 2], "follow_up_response": "a"}', "key_claims[1] must be a string"),
    ],
)
async def test_garbage_replies(
    mock: Any, client: httpx.AsyncClient, dns: FakeDns, record: GroundTruthRecord, body: bytes, reason: str
) -> None:
    mock.post(PINNED).mock(return_value=httpx.Response(200, content=body))
    with pytest.raises(OracleError) as info:
        await oracle(client, dns).invoke(record, "q?")
    assert reason in str(info.value)


async def test_oversized_reply_is_refused(
    mock: Any, client: httpx.AsyncClient, dns: FakeDns, record: GroundTruthRecord
) -> None:
    mock.post(PINNED).mock(return_value=httpx.Response(200, content=b"x" * 5000))
    with pytest.raises(OracleError, match=r"exceeds 1000 bytes"):
        await oracle(client, dns, max_response_bytes=1000).invoke(record, "q?")


# --- SSRF guard ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not globally routable"),
        ("::1", "loopback"),
        ("fe80::1%eth0", "link-local"),
        ("fd00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::a00:1", "private"),
        ("2002:a00:1::", "private"),
        ("ff02::1", "multicast"),
        (PUBLIC_IP, None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_forbidden_addresses(address: str, reason: str | None) -> None:
    assert forbidden_reason(address) == reason


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/oracle",
        "http://[::1]/oracle",
        "http://169.254.169.254/latest/meta-data/",
        "https://[fe80::1%25eth0]/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://localhost:9000/",  # resolved by the real OS resolver, no network needed
        "http://2130706433/",  # 127.0.0.1 written as a decimal integer
    ],
)
async def test_private_targets_are_refused(url: str) -> None:
    with pytest.raises(OracleRefused, match="ECHELON_ALLOW_PRIVATE_ORACLES"):
        await check_url_allowed(url, allow_private=False)


async def test_hostname_resolving_to_any_private_address_is_refused() -> None:
    dns = FakeDns({"mixed.example.com": [PUBLIC_IP, "10.0.0.7"]})
    with pytest.raises(OracleRefused, match=r"resolves to 10\.0\.0\.7 \(private\)"):
        await check_url_allowed("https://mixed.example.com/", allow_private=False, resolver=dns)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://oracle.example.com/x", "must use http or https, not 'ftp'"),
        ("file:///etc/passwd", "must use http or https, not 'file'"),
        ("oracle.example.com/x", "must use http or https"),
        ("https://user:pw@oracle.example.com/", "must not contain credentials"),
        ("http://oracle.example.com:99999/", "invalid port"),
    ],
)
async def test_bad_urls_are_refused(url: str, fragment: str, dns: FakeDns) -> None:
    with pytest.raises(OracleRefused) as info:
        await check_url_allowed(url, allow_private=False, resolver=dns)
    assert fragment in str(info.value)


async def test_private_allowed_when_configured(dns: FakeDns) -> None:
    await check_url_allowed("http://127.0.0.1:8000/oracle", allow_private=True, resolver=dns)


async def test_unresolvable_host(dns: FakeDns) -> None:
    with pytest.raises(OracleError, match="does not resolve"):
        await check_url_allowed("https://nowhere.invalid/", allow_private=False, resolver=dns)


async def test_dns_rebinding_between_check_and_invoke_is_caught(
    mock: Any, client: httpx.AsyncClient, dns: FakeDns, record: GroundTruthRecord
) -> None:
    route = mock.post(url__regex=r".*").mock(return_value=httpx.Response(200, json=REPLY))
    url = "http://oracle.example.com/summarise"
    await check_url_allowed(url, allow_private=False, resolver=dns)  # request time: public
    target = oracle(client, dns, url=url)
    dns.table["oracle.example.com"] = ["127.0.0.1"]  # the attacker's DNS flips the answer
    with pytest.raises(OracleRefused, match=r"resolves to 127\.0\.0\.1 \(loopback\)"):
        await target.invoke(record, "q?")
    assert route.call_count == 0


def test_construction_rejects_bad_scheme_and_header_injection(client: httpx.AsyncClient, dns: FakeDns) -> None:
    with pytest.raises(OracleRefused):
        oracle(client, dns, url="gopher://oracle.example.com/")
    with pytest.raises(RequestRejected) as info:
        oracle(client, dns, headers={"X-Api-Key": "abc\r\nX-Evil: 1"})
    assert "abc" not in str(info.value)
    assert SECRET not in repr(oracle(client, dns))
