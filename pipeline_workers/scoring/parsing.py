"""Pure parsing of judge output into counts and ratios.

Ratios are always recomputed from the judge's itemised lists; a ratio the judge states itself is
ignored, because models are good at verdicts per item and bad at arithmetic. Conventions:
- precision = supported / total claims; 0 claims -> 0.0 (an oracle that asserts nothing verifiable has
  shown nothing, and must not beat one that makes claims);
- recall = surfaced / listed changes, at most ``MAX_CHANGES``; 0 changes -> 1.0 (nothing to surface,
  e.g. an empty merge; the oracle does not control the diff, so this cannot be gamed);
- reply accuracy = the judge's score clamped to [0, 1] and snapped to the nearest rubric step.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from echelon_platform.domain.scoring_rules import RUBRIC, precision_of, ratio, recall_of
from echelon_platform.errors import ScoringError

__all__ = ["RUBRIC", "precision_of", "ratio", "recall_of"]

MAX_CHANGES = 10
MAX_CLAIMS = 50  # claims beyond this are not judged and count as unsupported (brevity is part of v1)
_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)```", re.DOTALL)
_MAX_OBJECT_STARTS = 200
_TRUE = frozenset({"true", "yes", "supported", "surfaced"})
_FALSE = frozenset({"false", "no", "unsupported", "not surfaced"})


@dataclass(frozen=True)
class Tally:
    hits: int
    total: int
    value: float
    # Per-item verdicts in order, for the judged items (claims: the first min(total, MAX_CLAIMS)).
    flags: tuple[bool, ...] | None = None


@dataclass(frozen=True)
class JudgeVerdict:
    claims: Tally
    changes: Tally
    reply_accuracy: float


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text``: inside a ``` fence, the whole text, or embedded in prose."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)]
    candidates.append(text)
    decoder = json.JSONDecoder()
    for candidate in candidates:
        candidate = candidate.strip()
        start, tried = candidate.find("{"), 0
        while start != -1 and tried < _MAX_OBJECT_STARTS:  # str.find, not a Python loop over every character
            tried += 1
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except ValueError:
                value = None
            if isinstance(value, dict):
                return value
            start = candidate.find("{", start + 1)
    excerpt = " ".join(text.split())[:160]
    raise ScoringError(f"judge output contains no JSON object: {excerpt!r}")


def _flag(value: object, field: str, index: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise ScoringError(f"judge item {index} has a non-boolean {field!r}: {value!r}")


def _items(obj: Mapping[str, Any], key: str) -> list[Any]:
    items = obj.get(key)
    if not isinstance(items, list):
        raise ScoringError(f"judge output lacks a {key!r} list")
    return items


def _flags(items: list[Any], field: str) -> list[bool]:
    out: list[bool] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or field not in item:
            raise ScoringError(f"judge item {i} lacks {field!r}")
        out.append(_flag(item[field], field, i))
    return out


def tally_claims(obj: Mapping[str, Any], expected: int | None = None) -> Tally:
    """Precision from ``{"claims": [{"claim", "supported"}]}``.

    With ``expected`` (the number of claims the oracle made) the judge must return a verdict for each
    of the first ``min(expected, MAX_CLAIMS)``; fewer is unusable, extra verdicts are ignored.
    """
    verdicts = _flags(_items(obj, "claims"), "supported")
    total = len(verdicts) if expected is None else expected
    judged = min(total, MAX_CLAIMS)
    if len(verdicts) < judged:
        raise ScoringError(f"judge returned {len(verdicts)} claim verdicts for {judged} claims")
    supported = sum(verdicts[:judged])
    return Tally(hits=supported, total=total, value=precision_of(supported, total), flags=tuple(verdicts[:judged]))


def tally_changes(obj: Mapping[str, Any], max_changes: int = MAX_CHANGES) -> Tally:
    """Recall from ``{"changes": [{"change", "surfaced"}]}``, considering at most ``max_changes``."""
    flags = _flags(_items(obj, "changes"), "surfaced")[:max_changes]
    surfaced = sum(flags)
    return Tally(hits=surfaced, total=len(flags), value=recall_of(surfaced, len(flags)))


def snap_to_rubric(value: float) -> float:
    """Clamp to [0, 1] and snap to the nearest rubric step; exact ties go to the higher step."""
    if math.isnan(value):
        raise ScoringError("reply accuracy score is NaN")
    clamped = min(1.0, max(0.0, value))
    return min(RUBRIC, key=lambda step: (abs(step - clamped), -step))


def reply_accuracy_of(obj: Mapping[str, Any]) -> float:
    raw = obj.get("score")
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            raw = None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ScoringError(f"judge output lacks a numeric 'score': {obj.get('score')!r}")
    return snap_to_rubric(float(raw))


def parse_judge_output(text: str, *, expected_claims: int | None = None) -> JudgeVerdict:
    """All three measures from one judge reply; ScoringError if any part is unusable."""
    obj = extract_json_object(text)
    return JudgeVerdict(
        claims=tally_claims(obj, expected_claims),
        changes=tally_changes(obj),
        reply_accuracy=reply_accuracy_of(obj),
    )


def parse_question(text: str, max_chars: int = 500) -> str:
    """The follow-up question from ``{"question": "..."}``, whitespace-normalised and bounded."""
    obj = extract_json_object(text)
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ScoringError("judge output lacks a non-empty 'question' string")
    return " ".join(question.split())[:max_chars]
