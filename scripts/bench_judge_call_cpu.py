"""CPU per judge call in the stage process: the scorer's call (`AnthropicScorer._call`, which reads the answer's
JSON itself) next to the same request answered through the SDK's response models (`raw.parse()`), in one run.

The judge is tests/fake_judge.py in its own process (its CPU is not counted); 200 concurrent calls per round,
5 rounds each, the median printed. Why the scorer does not use the SDK's models: they cost more CPU per call
than the rest of the call's handling.

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
from anthropic.types import MessageParam

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_workers.scoring.anthropic_judge import AnthropicScorer  # noqa: E402

PROMPT: list[MessageParam] = [
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
    client = anthropic.AsyncAnthropic(api_key="sk-ant-bench-0123456789", base_url=url, max_retries=0)
    scorer = AnthropicScorer(client)

    async def through_models() -> object:
        raw = await client.messages.with_raw_response.create(
            model=scorer._model, max_tokens=256, system=scorer._system_blocks, messages=PROMPT
        )
        return await raw.parse()

    async def scorer_call() -> object:
        return await scorer._call(PROMPT, 256)

    sdk = await _cpu_per_call(through_models, calls, rounds)
    ours = await _cpu_per_call(scorer_call, calls, rounds)
    result = {"sdk_models_ms_cpu": round(sdk, 3), "scorer_call_ms_cpu": round(ours, 3), "ratio": round(ours / sdk, 2)}
    print(json.dumps(result))


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
