"""The leaderboard as projected aggregates: each run's *contribution*, and how contributions sum into groups.

A run contributes to the leaderboard through its state, its public certificate, that certificate's latest
ratings and its logged judge calls. `contribution` turns those into one record; the read models keep every
run's current record and, per group, the sums of the records' counts. When anything about a run changes its
record is recomputed from scratch and the group sums move by (new − old): the sums depend only on the set
of current records, so redelivery (the same record again: nothing moves) and reordering cannot change them,
and a rebuild from the log reaches the same integers.

Counts are integers (fixed point for composites, latencies and cost), so sums are exact and associative in
any order (floats are not). Rules are those of the scan this replaces (`api/stats_scan.py`, held equal by
tests): runs count when visible, a certificate only when it decided its run and is not a rescore (a
certificate with `rescored_from` re-judges replies its source already counts).

Scopes: `all` (admins: every run), `public` (runs with a public certificate: what anyone sees) and
`u:<user>` (a user's visible runs without one: what that user sees on top of `public`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from echelon_platform.domain.agreement import Agreement, judge_step
from echelon_platform.domain.certificate import weighted_composite
from echelon_platform.domain.projections import RunState, Status
from echelon_platform.domain.values import construct_key

GroupBy = Literal["construct_id", "scoring_model"]
GROUPINGS: tuple[GroupBy, ...] = ("construct_id", "scoring_model")
# The counted fields, in this order in a record's `counts` and in the group hashes.
FIELDS = (
    "n",  # runs contributing anything (the group exists while n > 0)
    "runs",
    "completed",
    "failed",
    "certs",
    "composite",  # Σ composite × COMPOSITE_SCALE
    "latency",  # Σ scoring latency (ms) × LATENCY_SCALE
    "replays",
    "input_tokens",
    "output_tokens",
    "cost",  # Σ USD × COST_SCALE
)
# Fixed point: composites to 1e-9 (shown to 1e-6), latencies to 1e-6 ms (shown to 1e-3), cost to 1e-9 USD
# (shown to 1e-6). A group's sums stay below 2^53, so Redis' Lua (doubles) reads them exactly.
COMPOSITE_SCALE = 10**9
LATENCY_SCALE = 10**6
COST_SCALE = 10**9
PUBLIC, ALL = "public", "all"

ERROR_SCALE = 10**9  # |(rating − 1)/4 − composite| to 1e-9 (the mean is shown to 1e-6)

# (rating 1–5, the judge's composite of the rated replay, judge model, methodology version, replay, person)
Pair = tuple[int, float, str, str, str, str]


def user_scope(user_id: str) -> str:
    return f"u:{user_id}"


def judge_totals(calls: Iterable[Sequence[float]]) -> tuple[int, int, int] | None:
    """(input tokens, output tokens, cost × COST_SCALE) of a run's logged judge calls; None without any."""
    rows = list(calls)
    if not rows:
        return None
    return (
        sum(int(c[0]) for c in rows),
        sum(int(c[1]) for c in rows),
        sum(round(float(c[2]) * COST_SCALE) for c in rows),
    )


def judge_split(calls: Iterable[Sequence[Any]]) -> dict[str, tuple[int, int, int]]:
    """Per judge id, (input tokens, output tokens, cost × COST_SCALE) of a run's logged judge calls (calls
    projected before the judge was kept count under "")."""
    out: dict[str, tuple[int, int, int]] = {}
    for c in calls:
        judge = str(c[3]) if len(c) > 3 else ""
        i, o, cost = out.get(judge, (0, 0, 0))
        out[judge] = (i + int(c[0]), o + int(c[1]), cost + round(float(c[2]) * COST_SCALE))
    return out


def contribution(
    state: RunState,
    certificate: Mapping[str, Any] | None,
    ratings: Iterable[Mapping[str, Any]],
    judge: tuple[int, int, int] | None,
    by_judge: Mapping[str, tuple[int, int, int]] | None = None,
) -> dict[str, Any] | None:
    """The run's record (JSON-ready), or None when it counts nowhere.

    `certificate`: the run's certificate when it is the public one (else ignored); `ratings`: the latest
    rating per (replay, person) of that certificate; `judge`: `judge_totals` of the run's logged calls;
    `by_judge`: `judge_split` of them (the `scoring_model` grouping counts per judge, see `judge_rows`)."""
    public = certificate if certificate is not None and state.certificate_id == certificate["certificate_id"] else None
    # A rescore's certificate re-judges replies another certificate already counts: it is listed and readable
    # but adds nothing to the aggregates (no certificate, composite, replays, Brier or ratings), else the
    # same replies would count twice. Its run still counts as a run, with the judge calls it made.
    cert = public if public is not None and not public.get("rescored_from") else None
    if not state.visible and cert is None:
        return None
    counts = dict.fromkeys(FIELDS, 0)
    counts["n"] = 1
    usage = judge if state.visible else None
    if state.visible:
        counts["runs"] = 1
        counts["completed"] = int(state.status is Status.COMPLETED)
        counts["failed"] = int(state.status is Status.FAILED)
        if usage is not None:
            counts["input_tokens"], counts["output_tokens"], counts["cost"] = usage
    pairs: list[Pair] = []
    brier: float | None = None
    if cert is not None:
        counts["certs"] = 1
        counts["composite"] = round(float(cert["composite_score"]) * COMPOSITE_SCALE)
        brier = float(cert["brier"])
        scores = {s["replay_id"]: s for s in cert["individual_scores"]}
        for s in scores.values():
            counts["latency"] += round(float(s["scoring_latency_ms"]) * LATENCY_SCALE)
            counts["replays"] += 1
            if usage is None:  # a certificate from before judge calls were logged: its scores' figures
                counts["input_tokens"] += int(s.get("input_tokens", 0))
                counts["output_tokens"] += int(s.get("output_tokens", 0))
                counts["cost"] += round(float(s.get("cost_usd", 0.0)) * COST_SCALE)
        for rating in ratings:
            score = scores.get(rating["replay_id"])
            if score is not None:
                composite = weighted_composite(score, cert["weights"])
                pairs.append(
                    (
                        int(rating["rating"]),
                        composite,
                        str(score["scoring_model"]),
                        str(cert.get("methodology_version", "")),
                        str(rating["replay_id"]),
                        str(rating["user_id"]),
                    )
                )
        pairs.sort()
    scopes = [ALL, PUBLIC] if public is not None else [ALL, user_scope(str(state.user_id))]
    single = cert is not None and not cert.get("mixed_judges")
    return {
        "scopes": scopes,
        "construct_id": construct_group(public["construct_id"] if public is not None else state.construct_id),
        # The Brier and rating sets of a certificate judged by one judge; a mixed one is in no judge's.
        "scoring_model": cert["scoring_model"] if single and cert is not None else None,
        "counts": [counts[f] for f in FIELDS],
        "by_judge": judge_rows(counts, cert, by_judge if usage is not None else None),
        "brier": brier,
        "pairs": [list(p) for p in pairs],
    }


def judge_rows(
    counts: Mapping[str, int], cert: Mapping[str, Any] | None, by_judge: Mapping[str, tuple[int, int, int]] | None
) -> list[list[Any]]:
    """The run's counts per judge ([judge, counts] pairs), for `group_by=scoring_model`: each judge that made
    a logged call for the run or scored one of its certificate's replays has the run (its status), the
    tokens and cost of its own calls, and the replays it scored; a certificate counts under the judges that
    scored it, with the composite of the replays each scored (all of them when one judge did). A run no
    judge worked for stays under null."""
    scores = list(cert["individual_scores"]) if cert is not None else []
    judges = sorted({j for j in (by_judge or {}) if j} | {str(s["scoring_model"]) for s in scores})
    if not judges:
        return [[None, [counts[f] for f in FIELDS]]]
    rows: list[list[Any]] = []
    for judge in judges:
        row = dict.fromkeys(FIELDS, 0)
        for field in ("n", "runs", "completed", "failed"):
            row[field] = counts[field]
        if by_judge is not None:
            row["input_tokens"], row["output_tokens"], row["cost"] = by_judge.get(judge, (0, 0, 0))
        own = [s for s in scores if str(s["scoring_model"]) == judge]
        if own and cert is not None:
            row["certs"] = 1
            if len(own) == len(scores):
                row["composite"] = counts["composite"]
            else:
                mean = math.fsum(weighted_composite(s, cert["weights"]) for s in own) / len(own)
                row["composite"] = round(mean * COMPOSITE_SCALE)
            for s in own:
                row["latency"] += round(float(s["scoring_latency_ms"]) * LATENCY_SCALE)
                row["replays"] += 1
                if by_judge is None:
                    row["input_tokens"] += int(s.get("input_tokens", 0))
                    row["output_tokens"] += int(s.get("output_tokens", 0))
                    row["cost"] += round(float(s.get("cost_usd", 0.0)) * COST_SCALE)
        rows.append([judge, [row[f] for f in FIELDS]])
    return rows


def construct_group(construct_id: str | None) -> str | None:
    """Constructs are grouped by the canonical form of their id: spellings of one id are one leaderboard row."""
    return construct_key(construct_id) if construct_id is not None else None


def rank_score(composite: int, certs: int) -> int:
    """A group's mean composite in millionths, rounded half up: what the leaderboard shows and sorts by.
    Written with float operations Redis' Lua performs identically (exact operands, one IEEE division)."""
    return math.floor(composite / (certs * (COMPOSITE_SCALE // 10**6)) + 0.5)


def deltas(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> dict[tuple[str, GroupBy, str | None], list[int]]:
    """How each (scope, grouping, key) group's counts move when a run's record goes from `old` to `new`."""
    out: dict[tuple[str, GroupBy, str | None], list[int]] = {}
    for record, sign in ((old, -1), (new, 1)):
        if record is None:
            continue
        for scope in record["scopes"]:
            for group_by in GROUPINGS:
                parts = [[record[group_by], record["counts"]]]
                if group_by == "scoring_model" and "by_judge" in record:
                    parts = record["by_judge"]
                for key, counts in parts:
                    moved = out.setdefault((scope, group_by, key), [0] * len(FIELDS))
                    for i, value in enumerate(counts):
                        moved[i] += sign * value
    return {group: moved for group, moved in out.items() if any(moved)}


def pair_changes(old: Sequence[Sequence[Any]], new: Sequence[Sequence[Any]]) -> tuple[list[Pair], list[Pair]]:
    """(pairs to remove, pairs to add) when a run's rating pairs go from `old` to `new`."""
    before = {tuple(p) for p in old}
    after = {tuple(p) for p in new}
    return sorted(before - after), sorted(after - before)


def pair_terms(pair: Pair) -> tuple[int, int]:
    """What a pair adds to its agreement sums: within one step (0/1), the error × ERROR_SCALE."""
    h, c = pair[0], pair[1]
    return int(abs(h - judge_step(c)) <= 1), round(abs((h - 1) / 4 - c) * ERROR_SCALE)


def agreement_of(sums: Mapping[str, int]) -> tuple[Agreement, float | None]:
    """Agreement (and mean error) from an agreement set's sums, kept by the read models' Lua as pairs come and
    go: N; per rating v, n_v, P_v = Σ #{pairs with a smaller composite} and Q_v = Σ #{pairs with an equal
    composite, itself included} over the pairs rated v; ties = Σ (t³ − t) over equal composites; close; err.

    Spearman's ρ is the Pearson correlation of average ranks: a pair's composite rank is L + (E + 1)/2, a
    rating's is N_<v + (n_v + 1)/2, and the variance of average ranks is ((N³ − N) − Σ(t³ − t)) / 12; exact
    integers up to the final division, as `agreement.spearman` computes it with ties."""
    n = sums.get("N", 0)
    if n <= 0:
        return Agreement(ratings=0, spearman=None, within_one=None), None
    within = round(sums.get("close", 0) / n, 6)
    mae = round(sums.get("err", 0) / ERROR_SCALE / n, 6)
    counts = [sums.get(f"n{v}", 0) for v in range(1, 6)]
    rho: float | None = None
    if n >= 2:
        # Integers throughout (ranks doubled, variances ×12; ρ = 3·cov₄ / √(vx₁₂·vy₁₂)): exact, and cheap.
        below = 0
        products = 0  # Σ (2 · rating rank) · (2 · composite rank)
        for v in range(1, 6):
            n_v = counts[v - 1]
            products += (2 * below + n_v + 1) * (2 * sums.get(f"P{v}", 0) + sums.get(f"Q{v}", 0) + n_v)
            below += n_v
        cov = products - n * (n + 1) ** 2
        vx = n**3 - n - sum(c**3 - c for c in counts)
        vy = n**3 - n - sums.get("ties", 0)
        if vx > 0 and vy > 0:
            rho = round(3 * cov / math.sqrt(vx * vy), 6)
    return Agreement(ratings=n, spearman=rho, within_one=within), mae
