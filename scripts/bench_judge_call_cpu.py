"""CPU per judge call in the stage process: the scorer's call (`AnthropicScorer._call` on its own Messages API
client, `messages_api.py`) next to the same request sent through the Anthropic SDK, on its default transport
(httpx2) and on its aiohttp transport, read as the scorer reads it (the answer's JSON) and through the SDK's
response models (`raw.parse()`), in one run.

The judge is tests/fake_judge.py in its own process (its CPU is not counted); 200 concurrent calls per round,
5 rounds each, the median printed. Why the scorer has its own client: the SDK's request path costs several
times the CPU of the whole rest of a call.

    python scripts/bench_judge_call_cpu.py [--calls 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anthropic
import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_workers.scoring.anthropic_judge import AnthropicScorer, Message, answer_of  # noqa: E402
from pipeline_workers.scoring.messages_api import MessagesClient  # noqa: E402

PROMPT: list[Message] = [
    {"role": "user", "content": "Ask one follow-up question about this change: diff --git a/x.py b/x.py"}
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _cpu_per_call(call: Callable[[], Awaitable[object]], calls: int, rounds: int) -> float:
    for _ in range(50):  # warm: connections, imports, caches
        await call()
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        await asyncio.gather(*(call() for _ in range(calls)))
        samples.append((time.process_time() - started) / calls * 1000)
    return statistics.median(samples)


async def main(url: str, calls: int, rounds: int) -> None:
    async with httpx.AsyncClient() as probe:
        deadline = time.monotonic() + 20
        while True:
            try:
                if (await probe.get(f"{url}/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the fake judge did not start")
            await asyncio.sleep(0.05)
    key = "sk-ant-bench-0123456789"
    sdk = anthropic.AsyncAnthropic(api_key=key, base_url=url, max_retries=0)
    sdk_aiohttp = anthropic.AsyncAnthropic(
        api_key=key, base_url=url, max_retries=0, http_client=anthropic.DefaultAioHttpClient()
    )
    client = MessagesClient(key, url)
    scorer = AnthropicScorer(client)

    def through_sdk(http: anthropic.AsyncAnthropic, *, models: bool) -> Callable[[], Awaitable[object]]:
        async def call() -> object:
            async with scorer._limiter.slot():  # as the scorer's call takes its slot
                raw = await http.messages.with_raw_response.create(
                    model=scorer._model,
                    max_tokens=256,
                    system=scorer._system_blocks,  # type: ignore[arg-type]
                    messages=PROMPT,  # type: ignore[arg-type]
                )
                return await raw.parse() if models else answer_of(orjson.loads(await raw.read()))

        return call

    async def scorer_call() -> object:
        return await scorer._call(PROMPT, 256)

    result = {
        "sdk_models_ms_cpu": await _cpu_per_call(through_sdk(sdk, models=True), calls, rounds),
        "sdk_httpx2_ms_cpu": await _cpu_per_call(through_sdk(sdk, models=False), calls, rounds),
        "sdk_aiohttp_ms_cpu": await _cpu_per_call(through_sdk(sdk_aiohttp, models=False), calls, rounds),
        "scorer_call_ms_cpu": await _cpu_per_call(scorer_call, calls, rounds),
    }
    result = {k: round(v, 3) for k, v in result.items()}
    result["ratio_to_sdk_httpx2"] = round(result["scorer_call_ms_cpu"] / result["sdk_httpx2_ms_cpu"], 2)
    print(json.dumps(result))
    await client.close()
    await sdk.close()
    await sdk_aiohttp.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = _free_port()
    judge = subprocess.Popen([sys.executable, "-m", "tests.fake_judge", "--port", str(port)], cwd=ROOT)
    try:
        asyncio.run(main(f"http://127.0.0.1:{port}", args.calls, args.rounds))
    finally:
        judge.terminate()
        judge.wait(10)
