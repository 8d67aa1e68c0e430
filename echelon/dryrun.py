"""`echelon verify --dry-run`: what a run would ingest and invoke, with an estimated judge cost.

Nothing is submitted and nothing is published: the CLI reads the ground truth itself, with the same adapters
and selection policy the ingest worker uses (the bundled sample cloned into a temporary directory, a local
repository through git, a GitHub URL through GitHub's API, which needs network access). The judge cost is an
estimate: input tokens ≈ characters / 4 of the two prompts each replay sends (follow-up question, then
verdict), each with the change's diff, priced for the first configured judge; the offline scorer costs 0.
Output tokens depend on the judge's answers; only their bound (the calls' max_tokens) is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from echelon.repo_arg import repo_ref
from echelon_platform.config import Settings, judge_name
from echelon_platform.domain.repo_refs import SAMPLE_REPO, GitHubRepo, parse_repo_url
from echelon_platform.domain.values import GroundTruthRecord
from echelon_platform.errors import EchelonError, IngestError, RequestRejected
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.ingest.base import IngestResult, SourceSpec
from pipeline_workers.ingest.diffs import truncate_diff
from pipeline_workers.ingest.github import GitHubIngester
from pipeline_workers.ingest.local_git import LocalGitIngester
from pipeline_workers.scoring.anthropic_judge import price_for
from pipeline_workers.scoring.parsing import MAX_CHANGES
from pipeline_workers.scoring.prompts import load_prompts

CHARS_PER_TOKEN = 4
# AnthropicScorer's defaults: the most each reply may cost in output tokens.
QUESTION_MAX_TOKENS, JUDGE_MAX_TOKENS = 1024, 4096


@dataclass(frozen=True)
class Change:
    id: str
    title: str
    files: int
    diff_bytes: int
    input_tokens: int


@dataclass(frozen=True)
class Plan:
    repo: str
    oracle: str | None
    ground_truth_source: str
    commit_range: str
    selection_policy: str | None
    limit: int
    changes: list[Change]
    judge: str
    input_tokens: int
    estimated_cost_usd: float
    max_output_tokens: int
    max_output_cost_usd: float

    def as_json(self) -> dict[str, Any]:
        return {"dry_run": True, **asdict(self), "count": len(self.changes)}


def first_judge(settings: Settings) -> str:
    """The judge that scores while it answers (later ones in ECHELON_JUDGES only take over on failures)."""
    if settings.judges:
        return judge_name(settings.judges[0])
    return f"anthropic:{settings.judge_model}" if settings.anthropic_api_key is not None else "offline"


def replay_input_tokens(record: GroundTruthRecord, settings: Settings) -> int:
    """≈ tokens the judge reads for one replay: system prompt plus each of the two prompts, diff included.
    The oracle's reply (summary, claims, answer) is not known before the run and is not counted."""
    prompts = load_prompts(settings.methodology_version)
    fields = {
        "title": record.title,
        "description": record.description or "(none)",
        "files": "\n".join(record.files_changed) or "(none listed)",
        "diff": record.diff_content,
    }
    question = prompts.render("follow_up_question", **fields)
    judge = prompts.render(
        "judge", **fields, summary="", claims="", question="", answer="", max_changes=str(MAX_CHANGES)
    )
    chars = 2 * len(prompts.render("system")) + len(question) + len(judge)
    return math.ceil(chars / CHARS_PER_TOKEN)


def describe_oracle(args: argparse.Namespace) -> str | None:
    if args.oracle_url:
        return f"http {args.oracle_url}"
    if args.oracle_callable:
        return f"python {args.oracle_callable}"
    return None


async def ingest(args: argparse.Namespace, settings: Settings) -> IngestResult:
    """The changes the ingest worker would take, read here; nothing is published."""
    # Resolved as a submission would be: `.` is the directory this shell stands in.
    repo = await asyncio.to_thread(repo_ref, args.repo)
    spec = SourceSpec(repo_url=repo, limit=args.limit, token=args.github_token)
    try:
        if repo == SAMPLE_REPO:
            with tempfile.TemporaryDirectory(prefix="echelon-dry-run-") as tmp:
                sample = await materialise_sample_repo(Path(tmp) / "sample-repo")
                local = spec.model_copy(update={"repo_url": str(sample)})
                return await LocalGitIngester(policy=settings.selection_policy).fetch(local)
        if isinstance(parse_repo_url(repo), GitHubRepo):
            return await _github(spec, settings)
        return await LocalGitIngester(policy=settings.selection_policy).fetch(spec)
    except (IngestError, RequestRejected) as exc:
        raise EchelonError(f"dry run: {exc}") from exc


async def _github(spec: SourceSpec, settings: Settings) -> IngestResult:
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            return await GitHubIngester(client, base_url=settings.github_api_url, max_attempts=1).fetch(spec)
    except (httpx.HTTPError, IngestError) as exc:
        raise EchelonError(
            f"dry run of a GitHub repository needs network access to {settings.github_api_url}: {exc}"
        ) from exc


async def plan(args: argparse.Namespace, settings: Settings) -> Plan:
    result = await ingest(args, settings)
    records = [r.model_copy(update={"diff_content": truncate_diff(r.diff_content)}) for r in result.records]
    changes = [
        Change(r.id, r.title, len(r.files_changed), len(r.diff_content.encode()), replay_input_tokens(r, settings))
        for r in records
    ]
    judge = first_judge(settings)
    tokens = sum(c.input_tokens for c in changes)
    out_tokens = (QUESTION_MAX_TOKENS + JUDGE_MAX_TOKENS) * len(changes)
    cost = out_cost = 0.0
    if judge.startswith("anthropic:"):
        price_in, price_out = price_for(judge.partition(":")[2])
        cost, out_cost = tokens * price_in / 1e6, out_tokens * price_out / 1e6
    else:
        out_tokens = 0
    return Plan(
        repo=args.repo,
        oracle=describe_oracle(args),
        ground_truth_source=result.ground_truth_source,
        commit_range=result.commit_range,
        selection_policy=result.selection_policy,
        limit=args.limit,
        changes=changes,
        judge=judge,
        input_tokens=tokens if judge != "offline" else 0,
        estimated_cost_usd=round(cost, 6),
        max_output_tokens=out_tokens,
        max_output_cost_usd=round(out_cost, 6),
    )


def render(p: Plan) -> str:
    lines = [
        f"dry run: nothing submitted; {len(p.changes)} change(s) of at most {p.limit} would be ingested",
        f"ground truth  {p.ground_truth_source} {p.commit_range}"
        + (f" (policy {p.selection_policy})" if p.selection_policy else ""),
        f"oracle        {p.oracle or '(none given)'}: called once per change, with the judge's follow-up question",
    ]
    lines += [f"  {c.id:<12} {c.diff_bytes:>8} B diff  {c.files:>3} file(s)  {c.title}" for c in p.changes]
    if p.judge == "offline":
        lines.append("judge         offline scorer: no judge cost")
    else:
        lines.append(
            f"judge         {p.judge}: ≈{p.input_tokens} input tokens, ≈${p.estimated_cost_usd:.4f} "
            f"(output at most {p.max_output_tokens} tokens, ${p.max_output_cost_usd:.4f})"
        )
    return "\n".join(lines)
