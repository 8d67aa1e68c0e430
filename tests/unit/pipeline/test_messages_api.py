"""The judge's HTTP client over real sockets (tests/fake_anthropic.py on a loopback port): what it sends,
how it reads error answers, and what no answer looks like."""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest

from pipeline_workers.scoring.messages_api import (
    API_VERSION,
    JudgeStatusError,
    JudgeUnreachable,
    MessagesClient,
)
from tests.fake_anthropic import OVERLOADED, FakeAnthropic, serving

KEY = "sk-ant-api03-Qm8Rt2Vx6Yz0Ab4Cd8Ef2Gh6Ij0Kl4Mn8-OpQrAA"
REQUEST = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 256,
    "system": [{"type": "text", "text": "You are an impartial judge.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "Ask one question. You write ONE specific question."}],
}


async def test_a_request_carries_the_key_and_version_and_the_answer_is_the_apis_json() -> None:
    async with serving(FakeAnthropic()) as fake:
        client = MessagesClient(KEY, fake.url + "/")
        try:
            answer = await client.create(REQUEST)
        finally:
            await client.close()
    assert answer.status == 200
    message = orjson.loads(answer.body)
    assert message["type"] == "message" and message["content"][0]["type"] == "text"
    assert fake.requests == [REQUEST] and fake.keys == [KEY]
    assert API_VERSION == "2026-10-21"
    assert KEY not in repr(client)


async def test_an_error_answer_is_raised_with_its_status_type_message_and_headers() -> None:
    async with serving(FakeAnthropic(plan=[OVERLOADED])) as fake:
        client = MessagesClient(KEY, fake.url)
        try:
            with pytest.raises(JudgeStatusError) as info:
                await client.create(REQUEST)
        finally:
            await client.close()
    assert (info.value.status, info.value.kind, info.value.api_message) == (529, "overloaded_error", "Overloaded")
    assert info.value.headers["request-id"] == "req_011CSHoEeqs5C35K2UUqR7Fy"


async def test_no_server_is_unreachable_and_a_silent_one_times_out() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    client = MessagesClient(KEY, f"http://127.0.0.1:{closed_port}")
    with pytest.raises(JudgeUnreachable) as refused:
        await client.create(REQUEST)
    await client.close()
    assert not refused.value.timed_out
    async with serving(FakeAnthropic(release=asyncio.Event())) as fake:
        client = MessagesClient(KEY, fake.url, timeout_s=0.3)
        try:
            with pytest.raises(JudgeUnreachable) as silent:
                await client.create(REQUEST)
        finally:
            await client.close()
    assert silent.value.timed_out and str(silent.value) == "APITimeoutError"
    assert fake.held == 1


async def test_the_environments_proxy_is_used_as_read_when_the_client_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fake serves as the proxy: a name that cannot resolve is reached only through it.
    async with serving(FakeAnthropic()) as fake:
        monkeypatch.setenv("HTTP_PROXY", fake.url.replace("http://", "http://ops:s3cret@"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        through = MessagesClient(KEY, "http://judge.invalid")
        monkeypatch.setenv("NO_PROXY", "judge.invalid")
        direct = MessagesClient(KEY, "http://judge.invalid")
        monkeypatch.delenv("HTTP_PROXY")  # read when each client was made, not per request
        try:
            answer = await through.create(REQUEST)
            with pytest.raises(JudgeUnreachable):
                await direct.create(REQUEST)
        finally:
            await through.close()
            await direct.close()
    assert answer.status == 200 and fake.requests == [REQUEST]
    assert fake.proxy_auth == ["Basic b3BzOnMzY3JldA=="]  # ops:s3cret


async def test_a_closed_client_sends_nothing() -> None:
    async with serving(FakeAnthropic()) as fake:
        client = MessagesClient(KEY, fake.url)
        await client.create(REQUEST)
        await client.close()
        with pytest.raises(JudgeUnreachable, match="closed"):
            await client.create(REQUEST)
    assert len(fake.requests) == 1
