"""An HTTP oracle's 429 + retry-after lowers its endpoint's adaptive limit and is asked again (it was not served)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import respx

from echelon_platform.adapters.adaptive_limit import LimiterRegistry, endpoint_id
from echelon_platform.domain.values import GroundTruthRecord
from echelon_platform.errors import OracleError
from pipeline_workers.oracles.http import HttpOracle

from .helpers import FakeDns

PUBLIC_IP = "93.184.216.34"
PINNED = f"https://{PUBLIC_IP}/v1/summarise"
REPLY = {"summary": "Adds truncate().", "key_claims": ["Adds truncate"], "follow_up_response": "It cuts text."}
REFUSED = httpx.Response(429, json={"detail": "slow down"}, headers={"retry-after": "0"})


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


@pytest.fixture
def mock() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield router


def oracle(
    client: httpx.AsyncClient, limits: LimiterRegistry, *, timeout_s: float = 5.0, secret: str = "7f3a9c2e51b84d06"
) -> HttpOracle:
    dns = FakeDns({"oracle.example.com": [PUBLIC_IP]})
    return HttpOracle(
        "https://oracle.example.com/v1/summarise",
        headers={"Authorization": f"Bearer sk-oracle-{secret}"},
        timeout_s=timeout_s,
        client=client,
        allow_private=False,
        resolver=dns,
        limits=limits,
    )


async def test_a_refused_call_is_asked_again_and_lowers_the_limit(
    mock: Any, client: httpx.AsyncClient, record: GroundTruthRecord
) -> None:
    route = mock.post(PINNED).mock(side_effect=[REFUSED, httpx.Response(200, json=REPLY)])
    limits = LimiterRegistry(cap=16)
    reply = await oracle(client, limits).invoke(record, "q?")
    assert reply.summary == "Adds truncate()."
    assert route.call_count == 2
    (limiter,) = limits.limiters
    assert limiter.limit < 16  # halved on the refusal, from the calls then in flight


async def test_refusals_are_bounded(mock: Any, client: httpx.AsyncClient, record: GroundTruthRecord) -> None:
    route = mock.post(PINNED).mock(return_value=REFUSED)
    with pytest.raises(OracleError, match="HTTP 429"):
        await oracle(client, LimiterRegistry(cap=16)).invoke(record, "q?")
    assert route.call_count == 3


async def test_the_timeout_counts_from_the_slot_not_the_queue(
    mock: Any, client: httpx.AsyncClient, record: GroundTruthRecord
) -> None:
    async def takes_a_while(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.4)
        return httpx.Response(200, json=REPLY)

    mock.post(PINNED).mock(side_effect=takes_a_while)
    limits = LimiterRegistry(cap=2)
    # Six calls, two at a time, each well within its 1 s: the last ones queue longer than that, and succeed.
    replies = await asyncio.gather(*(oracle(client, limits, timeout_s=1.0).invoke(record, "q?") for _ in range(6)))
    assert [r.summary for r in replies] == ["Adds truncate()."] * 6


async def test_a_timeout_lowers_the_limit(mock: Any, client: httpx.AsyncClient, record: GroundTruthRecord) -> None:
    mock.post(PINNED).mock(side_effect=httpx.ReadTimeout("slow"))
    limits = LimiterRegistry(cap=64, initial=4)
    with pytest.raises(OracleError, match="timed out"):
        await oracle(client, limits).invoke(record, "q?")
    (limiter,) = limits.limiters
    assert limiter.limit < 4


def test_one_limit_per_oracle_origin_whatever_its_credentials(client: httpx.AsyncClient) -> None:
    limits = LimiterRegistry(cap=8)
    oracle(client, limits, secret="aaaaaaaaaaaaaaaa")
    oracle(client, limits, secret="bbbbbbbbbbbbbbbb")
    (limiter,) = limits.limiters
    assert limiter.endpoint == endpoint_id("https://oracle.example.com")  # no credential in Redis keys or logs
