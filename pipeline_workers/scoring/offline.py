"""A deterministic, network-free judge based on lexical overlap with the diff.

It is a baseline, not a substitute for the LLM judge: it cannot tell a true claim from a false one
that uses the right words. Its value is that it is free, reproducible bit-for-bit, and still ranks a
faithful summary above an unrelated one, which is enough for demos, CI and offline installs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Literal

from echelon_platform.domain.values import GroundTruthRecord, JudgeCall, JudgeUsage, OracleReply, ReplayScore
from pipeline_workers.ingest.diffs import FileDiff, changed_lines, parse_diff
from pipeline_workers.scoring.base import judge_call, make_score, prompt_digest
from pipeline_workers.scoring.lexical import overlap, tokens
from pipeline_workers.scoring.parsing import (
    MAX_CHANGES,
    MAX_CLAIMS,
    JudgeVerdict,
    parse_judge_output,
    snap_to_rubric,
)
from pipeline_workers.scoring.prompts import METHODOLOGY_VERSION

OFFLINE_SCORER_NAME = "offline-lexical-v1"

_RELEVANT_LINES = 3


@dataclass(frozen=True)
class _Change:
    label: str
    key: frozenset[str]  # surfaced when all of these tokens are mentioned
    literal: str  # ... or when this text appears verbatim (case-insensitive)


@dataclass(frozen=True)
class _Analysis:
    files: list[FileDiff]
    vocabulary: frozenset[str]  # tokens of changed lines and of changed paths
    changes: list[_Change]


class OfflineLexicalScorer:
    def __init__(self, *, support_threshold: float = 0.5, methodology_version: str = METHODOLOGY_VERSION) -> None:
        self._threshold = support_threshold
        # It sends no prompt, but answers in the methodology's format and is read by its parser.
        self.methodology_version = methodology_version

    @property
    def name(self) -> str:
        return OFFLINE_SCORER_NAME

    async def follow_up_question(
        self, record: GroundTruthRecord, *, calls: list[JudgeCall] | None = None
    ) -> tuple[str, JudgeUsage]:
        started = time.perf_counter()
        question = question_for(record)
        if calls is not None:
            raw = json.dumps({"question": question}, ensure_ascii=False)
            calls.append(self._call("question", _inputs_digest(record, None, None), raw, started))
        return question, JudgeUsage()

    async def score(
        self,
        replay_id: str,
        record: GroundTruthRecord,
        reply: OracleReply,
        *,
        question: str | None = None,
        calls: list[JudgeCall] | None = None,
    ) -> ReplayScore:
        started = time.perf_counter()
        # The verdict goes through the same text and parser as an LLM judge's, so a certificate is
        # re-derived from the logged text the same way whichever judge scored it.
        raw = self.judge_text(record, reply, question=question)
        verdict = parse_judge_output(raw, expected_claims=len(reply.key_claims))
        if calls is not None:
            calls.append(self._call("score", _inputs_digest(record, reply, question), raw, started))
        return make_score(
            replay_id=replay_id,
            record=record,
            verdict=verdict,
            scoring_model=self.name,
            started=started,
            usage=JudgeUsage(),
            reply=reply,
        )

    def _call(self, purpose: Literal["question", "score"], digest: str, raw: str, started: float) -> JudgeCall:
        return judge_call(
            judge=self.name,
            model=self.name,
            purpose=purpose,
            round_trip=1,
            prompt_sha256=digest,
            methodology_version=self.methodology_version,
            usage=JudgeUsage(),
            latency_ms=(time.perf_counter() - started) * 1000.0,
            raw_text=raw,
            usable=True,
        )

    def judge(self, record: GroundTruthRecord, reply: OracleReply, *, question: str | None = None) -> JudgeVerdict:
        """The verdict alone (pure and synchronous)."""
        return parse_judge_output(
            self.judge_text(record, reply, question=question), expected_claims=len(reply.key_claims)
        )

    def judge_text(self, record: GroundTruthRecord, reply: OracleReply, *, question: str | None = None) -> str:
        """The itemised verdict in the judge's JSON answer format (claims, changes, score)."""
        analysis = _analyse(record)
        vocabulary = set(analysis.vocabulary)
        claims = [
            {"claim": claim, "supported": overlap(tokens(claim), vocabulary) >= self._threshold}
            for claim in reply.key_claims[:MAX_CLAIMS]
        ]
        told = " ".join([reply.summary, *reply.key_claims])
        told_tokens, told_lower = tokens(told), told.lower()
        changes = [
            {"change": c.label, "surfaced": c.key <= told_tokens or c.literal in told_lower} for c in analysis.changes
        ]
        accuracy = _reply_accuracy(
            question or question_for(record), reply.follow_up_response, analysis.files, analysis.vocabulary
        )
        return json.dumps({"claims": claims, "changes": changes, "score": accuracy}, ensure_ascii=False)


def _inputs_digest(record: GroundTruthRecord, reply: OracleReply | None, question: str | None) -> str:
    # The offline judge has no prompt: what it read is the diff, the reply and the question.
    return prompt_digest(
        record.diff_content,
        json.dumps(reply.model_dump(mode="json") if reply else None, sort_keys=True),
        question or "",
    )


def question_for(record: GroundTruthRecord) -> str:
    """A deterministic follow-up question about the most telling part of the diff."""
    files = parse_diff(record.diff_content)
    for f in files:
        for name in f.added_defs:
            if not name.lower().startswith("test"):
                return f"What does `{name}` in {f.path} do, and how does this change use it?"
    if not files:
        return f"What is the purpose of the change titled {record.title!r}?"
    main = _by_importance(files)[0]
    if main.status == "deleted":
        return f"Why is {main.path} deleted, and what did it contain?"
    if main.status == "renamed":
        return f"What was {main.old_path} renamed to, and what else changed with it?"
    return f"What does the change do in {main.path}?"


def _by_importance(files: list[FileDiff]) -> list[FileDiff]:
    # Code before tests, then by size of change, then by path for a stable order.
    return sorted(files, key=lambda f: (_is_test(f.path), -f.churn, f.path))


def _is_test(path: str) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    return "/tests/" in f"/{path.lower()}" or name.startswith("test_") or ".test." in name or ".spec." in name


def _analyse(record: GroundTruthRecord) -> _Analysis:
    files = parse_diff(record.diff_content)
    vocabulary: set[str] = set()
    for _, _, text in changed_lines(files):
        vocabulary |= tokens(text)
    for path in [*record.files_changed, *(f.path for f in files), *(f.old_path or "" for f in files)]:
        vocabulary |= tokens(path)

    changes: list[_Change] = []
    for f in _by_importance(files):
        base = f.path.rsplit("/", 1)[-1]
        stem = base.rsplit(".", 1)[0] if "." in base[1:] else base
        changes.append(_Change(label=f"{f.status} {f.path}", key=frozenset(tokens(stem)), literal=base.lower()))
        for name in dict.fromkeys([*f.added_defs, *f.removed_defs]):
            changes.append(_Change(label=f"{name} in {f.path}", key=frozenset(tokens(name)), literal=name.lower()))
    # A change without any content token (e.g. a file named "a.c") can only be surfaced verbatim.
    return _Analysis(files=files, vocabulary=frozenset(vocabulary), changes=changes[:MAX_CHANGES])


def _reply_accuracy(question: str, answer: str, files: list[FileDiff], vocabulary: frozenset[str]) -> float:
    """Half coverage of the diff lines the question is about, half groundedness of the answer in the diff."""
    said = tokens(answer)
    if not said:
        return 0.0
    asked = tokens(question)
    lines = [(len(asked & tokens(f"{path} {text}")), i, text) for i, (path, _, text) in enumerate(changed_lines(files))]
    relevant = sorted((line for line in lines if line[0] > 0), key=lambda line: (-line[0], line[1]))
    chosen = relevant[:_RELEVANT_LINES] or lines[:_RELEVANT_LINES]
    target: set[str] = set()
    for _, _, text in chosen:
        target |= tokens(text)
    # Echoing the question's own words is not evidence of understanding the change.
    target = (target - asked) or target
    coverage = overlap(target, said)
    grounded = overlap(said, set(vocabulary))
    return snap_to_rubric(0.5 * coverage + 0.5 * grounded)
