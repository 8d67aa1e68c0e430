"""Input tokens billed per replay, with and without Anthropic prompt caching, and judge calls of a repeated run.

The judge (AnthropicScorer and its HTTP client) talks over HTTP to tests/fake_anthropic.py, which does Anthropic's
prompt-cache accounting (a prefix marked `cache_control` is cached from `--min-cacheable` tokens: 1024 for
Sonnet; writes cost 1.25x input, reads 0.1x). The replays are the last `--changes` non-merge commits of this
repository (their real diffs, cut at 40,000 characters) with a fixed oracle reply; each replay is one
follow-up question and one scoring call. The provider itself is not reached.

Prints one JSON object:
- `prompt_caching`: per replay, input tokens sent, input tokens billed (cache writes x1.25, reads x0.1) and
  cost, without caching (`before`) and with the system prompt marked (`after`);
- `answer_reuse`: judge requests and cost of a first run and of the same run again, when answers logged
  under the same cache key are reused (the stages look them up in the log; here a call log holds them).

    python scripts/bench_prompt_cache.py [--changes 20] [--min-cacheable 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echelon_platform.domain.values import GroundTruthRecord, JudgeCall, OracleReply  # noqa: E402
from pipeline_workers.scoring.anthropic_judge import CACHE_READ_PRICE, CACHE_WRITE_PRICE, AnthropicScorer  # noqa: E402
from pipeline_workers.scoring.base import CallLog, Reusable  # noqa: E402
from pipeline_workers.scoring.messages_api import MessagesClient  # noqa: E402
from tests.fake_anthropic import FakeAnthropic, serving  # noqa: E402

REPLY = OracleReply(
    summary="Refactors the module and adds tests for the new behaviour.",
    key_claims=["Adds a test", "Changes a function", "Updates documentation"],
    follow_up_response="It returns the new value and logs the change.",
)


def records(n: int) -> list[GroundTruthRecord]:
    shas = subprocess.run(
        ["git", "-C", str(ROOT), "log", "--no-merges", f"-{n}", "--format=%H"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    out = []
    for sha in shas:
        show = subprocess.run(
            ["git", "-C", str(ROOT), "show", "--format=%s%n%b", sha], check=True, capture_output=True, text=True
        ).stdout
        title, _, diff = show.partition("\ndiff --git")
        files = subprocess.run(
            ["git", "-C", str(ROOT), "show", "--name-only", "--format=", sha],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        out.append(
            GroundTruthRecord(
                id=sha[:12],
                title=title.splitlines()[0][:200] if title else sha,
                diff_content=("diff --git" + diff)[:40_000],
                files_changed=files,
                timestamp=datetime.now(UTC),
                repo="echelon-verify",
                sha=sha,
            )
        )
    return out


class MemoryAnswers(CallLog):
    """Reuses a usable answer it already holds for the same cache key (the stages read the log instead)."""

    def __init__(self, known: dict[str, Reusable]) -> None:
        super().__init__()
        self.known = known

    async def finished(self, call: JudgeCall) -> None:
        self.append(call)
        if call.usable and call.cache_key and call.reused_from is None:
            self.known.setdefault(call.cache_key, Reusable(f"call-{len(self.known)}", call.raw_text))

    async def reusable(self, cache_key: str) -> Reusable | None:
        return self.known.get(cache_key)


async def replay_all(scorer: AnthropicScorer, changes: list[GroundTruthRecord], calls: list[JudgeCall]) -> None:
    for record in changes:
        question, _ = await scorer.follow_up_question(record, calls=calls)
        await scorer.score(record.id, record, REPLY, question=question, calls=calls)


def tally(calls: list[JudgeCall], prices: tuple[float, float], replays: int) -> dict[str, Any]:
    sent = sum(c.input_tokens for c in calls)
    billed = sum(
        c.input_tokens
        - c.cache_read_tokens
        - c.cache_write_tokens
        + c.cache_write_tokens * CACHE_WRITE_PRICE
        + c.cache_read_tokens * CACHE_READ_PRICE
        for c in calls
    )
    return {
        "requests": sum(1 for c in calls if c.reused_from is None),
        "input_tokens_sent_per_replay": round(sent / replays, 1),
        "input_tokens_billed_per_replay": round(billed / replays, 1),
        "cache_read_tokens": sum(c.cache_read_tokens for c in calls),
        "cache_write_tokens": sum(c.cache_write_tokens for c in calls),
        "cost_usd_per_replay": round(sum(c.cost_usd for c in calls) / replays, 6),
        "cost_usd": round(sum(c.cost_usd for c in calls), 6),
    }


async def main() -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is the JSON result
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--min-cacheable", type=int, default=1024)
    args = parser.parse_args()
    changes = records(args.changes)
    result: dict[str, Any] = {"replays": len(changes), "min_cacheable_tokens": args.min_cacheable, "fake": True}
    caching: dict[str, Any] = {}
    for label, on in (("before", False), ("after", True)):
        async with serving(FakeAnthropic(min_cacheable_tokens=args.min_cacheable)) as fake:
            client = MessagesClient("sk-ant-bench-0123456789", fake.url)
            scorer = AnthropicScorer(client, prompt_caching=on)
            calls: list[JudgeCall] = []
            await replay_all(scorer, changes, calls)
            caching[label] = tally(calls, scorer._prices, len(changes))
            await client.close()
    result["prompt_caching"] = caching
    async with serving(FakeAnthropic(min_cacheable_tokens=args.min_cacheable)) as fake:
        client = MessagesClient("sk-ant-bench-0123456789", fake.url)
        scorer = AnthropicScorer(client)
        known: dict[str, Reusable] = {}
        first, again = MemoryAnswers(known), MemoryAnswers(known)
        await replay_all(scorer, changes, first)
        await replay_all(scorer, changes, again)
        result["answer_reuse"] = {
            "first_run": tally(first, scorer._prices, len(changes)),
            "repeated_run": tally(again, scorer._prices, len(changes)),
            "requests_received_by_the_provider": len(fake.requests),
        }
        await client.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
