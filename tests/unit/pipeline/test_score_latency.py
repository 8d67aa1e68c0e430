"""A replay's scoring latency: measured to the microsecond (no float noise in any view), logged ones kept."""

from __future__ import annotations

import time

from pipeline_workers.scoring.base import JudgeUsage, make_score
from pipeline_workers.scoring.parsing import JudgeVerdict, Tally
from tests.unit.pipeline.helpers import make_record

VERDICT = JudgeVerdict(claims=Tally(1, 2, 0.5), changes=Tally(1, 1, 1.0), reply_accuracy=1.0)
USAGE = JudgeUsage(input_tokens=0, output_tokens=0, cost_usd=0.0)


def test_a_measured_latency_has_at_most_microsecond_digits() -> None:
    score = make_score(
        replay_id="r1", record=make_record(), verdict=VERDICT, scoring_model="offline",
        started=time.perf_counter() - 0.000747777, usage=USAGE,
    )  # fmt: skip
    assert score.scoring_latency_ms == round(score.scoring_latency_ms, 3) and score.scoring_latency_ms > 0


def test_a_logged_latency_is_kept_exactly_for_rederivation() -> None:
    logged = 0.7477770000150485
    score = make_score(
        replay_id="r1", record=make_record(), verdict=VERDICT, scoring_model="offline",
        started=0.0, usage=USAGE, latency_ms=logged,
    )  # fmt: skip
    assert score.scoring_latency_ms == logged
