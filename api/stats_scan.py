"""The leaderboard computed by scanning every run, certificate and rating (what `GET /stats` did before it
read projected aggregates). Kept as the reference statement of the rules: tests hold the aggregates
(`domain/stats.py`, `adapters/stats_store.py`) equal to it on generated logs. Not served: its cost grows with
every run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from api.auth import Principal
from api.cert_schemas import GroupBy, HumanAgreement, StatsRow
from echelon_platform.domain.agreement import agreement
from echelon_platform.domain.certificate import weighted_composite
from echelon_platform.domain.projections import RunState, Status
from echelon_platform.domain.values import construct_key
from echelon_platform.ports.log import JudgeTotals


@dataclass
class _Group:
    runs: int = 0
    completed: int = 0
    failed: int = 0
    composites: list[float] = field(default_factory=list)
    briers: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    rating_errors: list[float] = field(default_factory=list)
    # (human rating, judge composite) per rating, overall and per (judge, methodology version).
    rating_pairs: list[tuple[int, float]] = field(default_factory=list)
    pairs_by_judge: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))

    def row(self, key: str | None) -> StatsRow:
        overall = agreement(self.rating_pairs)
        by_judge = [
            HumanAgreement(
                scoring_model=model,
                methodology_version=version,
                ratings=a.ratings,
                spearman=a.spearman,
                within_one=a.within_one,
            )
            for (model, version), pairs in sorted(self.pairs_by_judge.items())
            for a in [agreement(pairs)]
        ]
        return StatsRow(
            key=key,
            runs=self.runs,
            completed=self.completed,
            failed=self.failed,
            certificates=len(self.composites),
            mean_composite=round(math.fsum(self.composites) / len(self.composites), 6) if self.composites else None,
            best_brier=min(self.briers) if self.briers else None,
            scored_replays=len(self.latencies),
            mean_scoring_latency_ms=round(math.fsum(self.latencies) / len(self.latencies), 3)
            if self.latencies
            else None,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_tokens=self.input_tokens + self.output_tokens,
            total_cost_usd=round(self.cost, 6),
            human_ratings=len(self.rating_errors),
            human_judge_mae=round(math.fsum(self.rating_errors) / len(self.rating_errors), 6)
            if self.rating_errors
            else None,
            human_spearman=overall.spearman,
            human_within_one=overall.within_one,
            human_agreement=by_judge,
        )


def _construct(construct_id: str | None) -> str | None:
    """Grouped by the canonical form: spellings of one construct id are one leaderboard row."""
    return construct_key(construct_id) if construct_id is not None else None


def _judges(totals: JudgeTotals | None, cert: Mapping[str, Any] | None) -> list[str]:
    """The judges of a run: those with logged calls and those that scored its public certificate."""
    named = {j for j in (totals.by_judge if totals is not None else {}) if j}
    scored = {str(s["scoring_model"]) for s in cert["individual_scores"]} if cert is not None else set()
    return sorted(named | scored)


def countable_runs(
    runs: Iterable[RunState], certificates: Iterable[dict[str, Any]], user: Principal | None
) -> list[RunState]:
    """Runs a caller may have counted: certified ones (their certificate is public anyway) and, when signed
    in, their own (admins: all). Anyone else's uncertified run stays invisible, its construct id included."""
    public = {c["run_id"] for c in certificates}
    return [run for run in runs if run.run_id in public or (user is not None and user.can_see(run.user_id))]


def leaderboard(
    runs: Iterable[RunState],
    certificates: Iterable[dict[str, Any]],
    ratings: Mapping[str, list[dict[str, Any]]],
    group_by: GroupBy,
    judge_usage: Mapping[str, JudgeTotals] | None = None,
) -> list[StatsRow]:
    """Rows ordered by mean composite (best first, groups without a certificate last), then by key.

    Tokens and cost come from the logged judge calls (`judge_usage`, per run, each call once), failed runs
    included; a certificate issued before judge calls were logged counts its replay scores' figures."""
    usage = judge_usage or {}
    # A rescore's certificate re-judges its source's replies: listed, but counted in no aggregate.
    certs = [c for c in certificates if not c.get("rescored_from")]
    cert_of_run = {c["run_id"]: c for c in certs}
    by_model = group_by == "scoring_model"
    groups: dict[str | None, _Group] = defaultdict(_Group)
    for run in runs:
        if not run.visible:
            continue
        totals = usage.get(run.run_id)
        if not by_model:
            keys: list[str | None] = [_construct(run.construct_id)]
        else:  # per judge: each judge that made a call for the run or scored its certificate has the run
            keys = list(_judges(totals, cert_of_run.get(run.run_id))) or [None]
        for key in keys:
            group = groups[key]
            group.runs += 1
            group.completed += run.status is Status.COMPLETED
            group.failed += run.status is Status.FAILED
            if totals is not None:
                used = (totals.input_tokens, totals.output_tokens, totals.cost_usd)
                if by_model and key is not None:
                    used = totals.by_judge.get(key, (0, 0, 0.0))
                group.input_tokens += used[0]
                group.output_tokens += used[1]
                group.cost += used[2]
    for cert in certs:
        scores = {s["replay_id"]: s for s in cert["individual_scores"]}
        legacy = cert["run_id"] not in usage
        parts: list[tuple[str | None, list[dict[str, Any]]]] = [
            (_construct(cert["construct_id"]), list(scores.values()))
        ]
        if by_model:
            parts = [
                (judge, [s for s in scores.values() if str(s["scoring_model"]) == judge])
                for judge in sorted({str(s["scoring_model"]) for s in scores.values()})
            ]
        single = len(parts) == 1
        for key, own in parts:
            group = groups[key]
            if single:
                group.composites.append(float(cert["composite_score"]))
            else:  # a mixed certificate: under each judge, the composite of the replays it scored
                group.composites.append(math.fsum(weighted_composite(s, cert["weights"]) for s in own) / len(own))
            for s in own:
                group.latencies.append(float(s["scoring_latency_ms"]))
                if legacy:
                    group.input_tokens += int(s.get("input_tokens", 0))
                    group.output_tokens += int(s.get("output_tokens", 0))
                    group.cost += float(s.get("cost_usd", 0.0))
            if not single:
                continue  # its Brier and ratings are in no judge's row
            group.briers.append(float(cert["brier"]))
            for rating in ratings.get(cert["certificate_id"], []):
                score = scores.get(rating["replay_id"])
                if score is not None:
                    value = int(rating["rating"])
                    composite = weighted_composite(score, cert["weights"])
                    group.rating_errors.append(abs((value - 1) / 4 - composite))
                    group.rating_pairs.append((value, composite))
                    judge = (str(score["scoring_model"]), str(cert.get("methodology_version", "")))
                    group.pairs_by_judge[judge].append((value, composite))
    rows = [g.row(k) for k, g in groups.items()]
    return sorted(
        rows,
        key=lambda row: (
            row.mean_composite is None,
            -(row.mean_composite or 0.0),
            row.key is None,
            row.key or "",
        ),
    )
