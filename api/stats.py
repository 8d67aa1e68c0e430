"""`GET /stats`: the leaderboard, read from aggregates the coordinator projects (see domain/stats.py and
adapters/stats_store.py), so a request costs a few Redis commands per row shown whatever the number of runs.

Anonymous callers read the `public` scope (certified runs), admins `all`; a signed-in user reads `public`
with their own uncertified runs merged in (bounded by the constructs they ran). Human agreement (Spearman's
ρ needs ranks) is computed per row shown from the group's stored rating pairs: its cost grows with the
ratings of the groups on the page, not with the number of runs. Rate limited per client address.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api import responses as r
from api.cert_schemas import GroupBy, HumanAgreement, StatsResponse, StatsRow
from api.deps import ApiKeysDep, OptionalUserDep, ReadModelsDep, SettingsDep
from echelon_platform.adapters.stats_store import Group, StatsReader
from echelon_platform.domain.stats import (
    ALL,
    COST_SCALE,
    LATENCY_SCALE,
    PUBLIC,
    agreement_of,
    rank_score,
    user_scope,
)

router = APIRouter(prefix="/api/v1/verification", tags=["stats"])


def stats_row(group: Group) -> StatsRow:
    c = group.counts
    overall, mae = agreement_of(group.agreement)
    by_judge = {judge: agreement_of(sums)[0] for judge, sums in sorted(group.by_judge.items())}
    return StatsRow(
        key=group.key,
        runs=c["runs"],
        completed=c["completed"],
        failed=c["failed"],
        certificates=c["certs"],
        mean_composite=rank_score(c["composite"], c["certs"]) / 10**6 if c["certs"] else None,
        best_brier=group.best_brier,
        scored_replays=c["replays"],
        mean_scoring_latency_ms=round(c["latency"] / LATENCY_SCALE / c["replays"], 3) if c["replays"] else None,
        input_tokens=c["input_tokens"],
        output_tokens=c["output_tokens"],
        total_tokens=c["input_tokens"] + c["output_tokens"],
        total_cost_usd=round(c["cost"] / COST_SCALE, 6),
        human_ratings=overall.ratings,
        human_judge_mae=mae,
        human_spearman=overall.spearman,
        human_within_one=overall.within_one,
        human_agreement=[
            HumanAgreement(
                scoring_model=model,
                methodology_version=version,
                ratings=a.ratings,
                spearman=a.spearman,
                within_one=a.within_one,
            )
            for (model, version), a in by_judge.items()
        ],
    )


@router.get("/stats", response_model=StatsResponse, responses=r.merge(r.PUBLIC, r.UNAUTHORIZED, r.RATE_LIMITED))
async def stats(
    request: Request,
    read_models: ReadModelsDep,
    api_keys: ApiKeysDep,
    settings: SettingsDep,
    user: OptionalUserDep,
    group_by: Annotated[GroupBy, Query()] = "construct_id",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> StatsResponse:
    """Public leaderboard: per construct (or judge model) runs, outcomes, certificate quality, judge cost,
    and how far people's replay ratings are from the judge's scores. Anonymous callers see certified runs
    only; signed in, your own uncertified runs count too (admins: everyone's). Rate limited per client
    address (`ECHELON_STATS_PER_MINUTE`, 429 with Retry-After)."""
    limiter = api_keys.rate_limiter(limit=settings.stats_per_minute, window_s=60)
    await limiter.hit("stats", request.client.host if request.client else "unknown")
    if user is None:
        scope, extra = PUBLIC, None
    elif user.is_admin:
        scope, extra = ALL, None
    else:
        scope, extra = PUBLIC, user_scope(user.user_id)
    groups, total = await StatsReader(read_models).page(
        scope=scope, extra=extra, group_by=group_by, offset=offset, limit=limit
    )
    return StatsResponse(
        group_by=group_by, rows=[stats_row(g) for g in groups], total=total, limit=limit, offset=offset
    )
