"""The leaderboard's projected aggregates in Redis: writing (live projector, rebuild, repair) and reading.

Per run, its record (`domain.stats.contribution`) in one hash; per (scope, grouping, key), a hash of summed
counts, moved by (new record − old record) in a Lua script that also keeps the group's place in the
leaderboard order (a sorted set of groups with a certificate by mean composite, one of those without by key)
and drops a group whose last run left it. Per (grouping, key), the certified runs' Brier scores (the best is
the first) and rating pairs. Every write is derived from the records alone, so the live projector, a rebuild
and a partition's repair all reach the same keys and values whatever order the events came in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from echelon_platform.adapters.readmodel_store import Keys, ReadModels, text
from echelon_platform.domain.projections import RunState
from echelon_platform.domain.stats import (
    COMPOSITE_SCALE,
    FIELDS,
    GROUPINGS,
    GroupBy,
    Pair,
    contribution,
    deltas,
    judge_split,
    judge_totals,
    pair_changes,
    pair_terms,
)

# Per operation: keys group hash, ranked, unranked; args member ('' for the null key, which is in no index),
# one delta per field. Every field is incremented, zeros too, so a group hash always holds every field.
_MOVE_GROUP = (
    "local fields = {"
    + ", ".join(f"'{f}'" for f in FIELDS)
    + "}\n"
    + f"local unit = {COMPOSITE_SCALE // 10**6}\n"
    + """
local function op(K, A)
  for i = 1, #fields do
    redis.call('HINCRBY', K[1], fields[i], A[i + 1])
  end
  local member = A[1]
  if tonumber(redis.call('HGET', K[1], 'n')) <= 0 then
    redis.call('DEL', K[1])
    if member ~= '' then
      redis.call('ZREM', K[2], member)
      redis.call('ZREM', K[3], member)
    end
    return
  end
  if member ~= '' then
    local certs = tonumber(redis.call('HGET', K[1], 'certs'))
    if certs > 0 then
      local composite = tonumber(redis.call('HGET', K[1], 'composite'))
      redis.call('ZADD', K[2], -math.floor(composite / (certs * unit) + 0.5), member)
      redis.call('ZREM', K[3], member)
    else
      redis.call('ZADD', K[3], 0, member)
      redis.call('ZREM', K[2], member)
    end
  end
end
"""
)

# One rating pair into (sign 1) or out of (−1) an agreement set, keeping the sums `agreement_of` reads.
# Per operation: keys sums hash, the set's pairs rated 1..5 (sorted by composite), the group's judges hash;
# args sign, member, rating, composite (exact decimal), close (0/1), error, judges field ('': none).
# Counts are taken over the other pairs; a pair already in (or already out) changes nothing.
_MOVE_PAIR = """
-- As an integer string: a Lua number would go as '-0' or in exponent form, which HINCRBY refuses.
local function add(key, field, amount)
  return redis.call('HINCRBY', key, field, string.format('%d', amount))
end
local function op(K, A)
  local sign, member, h, c = tonumber(A[1]), A[2], tonumber(A[3]), A[4]
  local own = K[1 + h]
  if sign < 0 then
    if redis.call('ZREM', own, member) == 0 then return end
  elseif redis.call('ZSCORE', own, member) then
    return
  end
  local less, equal, greater, same = 0, 0, {}, {}
  for v = 1, 5 do
    local lt = redis.call('ZCOUNT', K[1 + v], '-inf', '(' .. c)
    local eq = redis.call('ZCOUNT', K[1 + v], c, c)
    greater[v] = redis.call('ZCARD', K[1 + v]) - lt - eq
    same[v] = eq
    less, equal = less + lt, equal + eq
  end
  local sums = K[1]
  add(sums, 'N', sign)
  add(sums, 'close', sign * tonumber(A[5]))
  add(sums, 'err', sign * tonumber(A[6]))
  add(sums, 'ties', sign * (3 * equal * equal + 3 * equal))
  for v = 1, 5 do
    local p, q = greater[v], same[v]
    if v == h then
      add(sums, 'n' .. v, sign)
      p, q = p + less, q + equal + 1
    else
      add(sums, 'n' .. v, 0)
    end
    add(sums, 'P' .. v, sign * p)
    add(sums, 'Q' .. v, sign * q)
  end
  if sign > 0 then redis.call('ZADD', own, c, member) end
  if A[7] ~= '' then
    if add(K[7], A[7], sign) <= 0 then redis.call('HDEL', K[7], A[7]) end
  end
  if tonumber(redis.call('HGET', sums, 'N')) <= 0 then redis.call('DEL', sums) end
end
"""


# Scripts go whole (EVAL): Redis compiles one once and finds it by its hash after, and a restart that emptied
# its script cache changes nothing. By hash (EVALSHA), redis-py would first ask Redis whether it has them
# (SCRIPT EXISTS) before every pipeline: one more round trip on every writer batch.


def _batched(op: str, keys_per_op: int, args_per_op: int) -> str:
    """A script applying `op(K, A)` to each operation of a call: one command for many, as redis-py's cost is
    per command."""
    text = (
        op
        + f"local nk, na = {keys_per_op}, {args_per_op}\n"
        + """
for i = 0, #ARGV / na - 1 do
  local K, A = {}, {}
  for j = 1, nk do K[j] = KEYS[i * nk + j] end
  for j = 1, na do A[j] = ARGV[i * na + j] end
  op(K, A)
end
return 0
"""
    )
    return text


_GROUP_SCRIPT = _batched(_MOVE_GROUP, 3, 1 + len(FIELDS))
_PAIR_SCRIPT = _batched(_MOVE_PAIR, 7, 7)
OPS_PER_CALL = 200  # operations per script call: bounded replies and argument lists


class _Calls:
    """Operations collected per script, queued as few calls."""

    def __init__(self) -> None:
        self.ops: dict[str, list[tuple[Sequence[str], Sequence[Any]]]] = {}

    def add(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        self.ops.setdefault(script, []).append((keys, args))

    def queue(self, pipe: aioredis.client.Pipeline) -> None:
        for script, ops in self.ops.items():
            for i in range(0, len(ops), OPS_PER_CALL):
                chunk = ops[i : i + OPS_PER_CALL]
                keys = [k for op_keys, _ in chunk for k in op_keys]
                args = [a for _, op_args in chunk for a in op_args]
                pipe.eval(script, len(keys), *keys, *args)


Record = dict[str, Any]
Change = tuple[str, Record | None, Record | None]  # run id, old record, new record


def queue_stats(pipe: aioredis.client.Pipeline, keys: Keys, changes: Iterable[Change]) -> None:
    """Queue the writes that move the aggregates from every run's old record to its new one: a few multi-key
    commands per call (a rebuild writes thousands of runs per call), one Lua call per moved group and pair."""
    moved: dict[tuple[str, GroupBy, str | None], list[int]] = {}
    written: dict[str, bytes] = {}
    dropped: list[str] = []
    leaving: dict[str, list[str]] = {}  # Brier sorted set → runs to remove (before any is added)
    joining: dict[str, dict[str, float]] = {}
    calls = _Calls()
    for run_id, old, new in changes:
        if old == new:
            continue
        for group, delta in deltas(old, new).items():
            total = moved.setdefault(group, [0] * len(FIELDS))
            for i, d in enumerate(delta):
                total[i] += d
        for group_by in GROUPINGS:
            old_key = old[group_by] if old is not None and old["brier"] is not None else None
            new_key = new[group_by] if new is not None and new["brier"] is not None else None
            if old_key is not None:
                leaving.setdefault(keys.stats_brier(group_by, old_key), []).append(run_id)
            if new_key is not None:
                joining.setdefault(keys.stats_brier(group_by, new_key), {})[run_id] = new["brier"]  # type: ignore[index]
            old_pairs = old["pairs"] if old_key is not None else []  # type: ignore[index]
            new_pairs = new["pairs"] if new_key is not None else []  # type: ignore[index]
            if old_key == new_key:
                removed, added = pair_changes(old_pairs, new_pairs)
            else:
                removed, added = pair_changes(old_pairs, [])[0], pair_changes([], new_pairs)[1]
            for pair in removed:
                _queue_pair(calls, keys, group_by, str(old_key), run_id, pair, -1)
            for pair in added:
                _queue_pair(calls, keys, group_by, str(new_key), run_id, pair, 1)
        if new is None:
            dropped.append(run_id)
        else:
            written[run_id] = orjson.dumps(new)
    for brier, runs in leaving.items():
        pipe.zrem(brier, *runs)
    for brier, scores in joining.items():
        pipe.zadd(brier, scores)
    if dropped:
        pipe.hdel(keys.stats_records, *dropped)
    if written:
        pipe.hset(keys.stats_records, mapping=written)  # type: ignore[arg-type]
    for (scope, group_by, key), delta in sorted(moved.items(), key=lambda item: repr(item[0])):
        if any(delta):
            group_keys = (
                keys.stats_group(scope, group_by, key),
                keys.stats_ranked(scope, group_by),
                keys.stats_unranked(scope, group_by),
            )
            calls.add(_GROUP_SCRIPT, group_keys, (key if key is not None else "", *delta))
    calls.queue(pipe)


def _queue_pair(calls: _Calls, keys: Keys, group_by: str, key: str, run_id: str, pair: Pair, sign: int) -> None:
    """Move one rating pair in or out of its group's agreement set and its judge's."""
    rating, composite, model, version, replay_id, user_id = pair
    close, error = pair_terms(pair)
    member = f"{run_id}|{replay_id}|{user_id}"
    judges = keys.stats_judges(group_by, key)
    for judge in (None, (model, version)):
        sums = keys.stats_agreement(group_by, key, judge)
        field = "" if judge is None else orjson.dumps(list(judge)).decode()
        args = (sign, member, rating, repr(float(composite)), close, error, field)
        calls.add(_PAIR_SCRIPT, (sums, *(f"{sums}:z{v}" for v in range(1, 6)), judges), args)


def keep_latest(current: dict[str, Any], rating: Mapping[str, Any]) -> None:
    """Ratings' rule (as the read model's Lua): per (replay, person) the one with the greatest event id."""
    field = f"{rating['replay_id']}|{rating['user_id']}"
    held = current.get(field)
    if held is None or held["event_id"] < rating["event_id"]:
        current[field] = dict(rating)


@dataclass
class RunInputs:
    """What a run's record is computed from, besides its state, as Redis holds it before a batch."""

    record: Record | None
    certificate: dict[str, Any] | None
    ratings: dict[str, Any]  # `<replay>|<user>` → rating
    judge: dict[str, list[Any]]  # log position → [input tokens, output tokens, cost, judge]

    def contribution(self, state: RunState) -> Record | None:
        calls = list(self.judge.values())
        return contribution(state, self.certificate, self.ratings.values(), judge_totals(calls), judge_split(calls))


# Per run (ARGV: run id, 1 when it has a public certificate; KEYS: records hash, then per run its judge calls,
# certificate and ratings keys): record, judge calls, certificate, ratings. One command for a whole batch.
_READ_INPUTS = """
local out = {}
for i = 1, #ARGV / 2 do
  local run, certified, k = ARGV[2 * i - 1], ARGV[2 * i] == '1', 1 + 3 * (i - 1)
  local row = {redis.call('HGET', KEYS[1], run), redis.call('HGETALL', KEYS[k + 1]), false, {}}
  if certified then
    row[3] = redis.call('GET', KEYS[k + 2])
    row[4] = redis.call('HGETALL', KEYS[k + 3])
  end
  out[i] = row
end
return out
"""


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return {text(flat[i]): orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)}


async def read_inputs(redis: aioredis.Redis, keys: Keys, states: Mapping[str, RunState]) -> dict[str, RunInputs]:
    """Each run's record, public certificate, ratings and judge calls as stored (one command per 200 runs)."""
    runs = list(states)
    if not runs:
        return {}
    pipe = redis.pipeline(transaction=False)
    for i in range(0, len(runs), OPS_PER_CALL):
        call_keys, args = [keys.stats_records], []
        for run_id in runs[i : i + OPS_PER_CALL]:
            cert_id = states[run_id].certificate_id or ""
            call_keys += [keys.judge_calls(run_id), keys.cert(cert_id), keys.ratings(cert_id)]
            args += [run_id, "1" if cert_id else "0"]
        pipe.eval(_READ_INPUTS, len(call_keys), *call_keys, *args)
    rows = [row for reply in await pipe.execute() for row in reply]
    out: dict[str, RunInputs] = {}
    for run_id, (record, judge, cert, ratings) in zip(runs, rows, strict=True):
        out[run_id] = RunInputs(
            record=orjson.loads(record) if record else None,
            certificate=orjson.loads(cert) if cert else None,
            ratings=_pairs(ratings),
            judge=_pairs(judge),
        )
    return out


async def read_records(redis: aioredis.Redis, keys: Keys, run_ids: list[str]) -> dict[str, Record | None]:
    if not run_ids:
        return {}
    raws = await redis.hmget(keys.stats_records, run_ids)
    return {run_id: orjson.loads(raw) if raw else None for run_id, raw in zip(run_ids, raws, strict=True)}


@dataclass(frozen=True, slots=True)
class Group:
    key: str | None
    counts: dict[str, int]
    best_brier: float | None
    agreement: dict[str, int]  # the group's agreement sums (see domain.stats.agreement_of)
    by_judge: dict[tuple[str, str], dict[str, int]]


class StatsReader:
    """One leaderboard page from the aggregates: a few commands per group shown, whatever the number of runs.

    `extra` (a user's own uncertified runs) is merged into `scope` (public): its groups' counts are added,
    and its groups that `scope` lacks are listed after the ranked ones, by key. Those are read whole: bounded
    by the number of constructs the user ran, not by anyone's runs."""

    def __init__(self, read_models: ReadModels) -> None:
        self._rm = read_models

    async def page(
        self, *, scope: str, extra: str | None, group_by: str, offset: int, limit: int
    ) -> tuple[list[Group], int]:
        redis = self._rm.redis
        keys = await self._rm.keys()
        pipe = redis.pipeline(transaction=False)
        pipe.zcard(keys.stats_ranked(scope, group_by))
        pipe.zrange(keys.stats_unranked(scope, group_by), 0, -1) if extra else pipe.zcard(
            keys.stats_unranked(scope, group_by)
        )
        pipe.exists(keys.stats_group(scope, group_by, None))
        pipe.zrange(keys.stats_ranked(scope, group_by), offset, offset + limit - 1)  # the usual page: ranked
        if extra is not None:
            pipe.zrange(keys.stats_ranked(extra, group_by), 0, -1)
            pipe.zrange(keys.stats_unranked(extra, group_by), 0, -1)
            pipe.exists(keys.stats_group(extra, group_by, None))
        replies = await pipe.execute()
        ranked_total, unranked, has_null = int(replies[0]), replies[1], bool(replies[2])
        unranked_keys: list[str] | None = None
        if extra is not None:
            own = [text(m) for m in (*replies[4], *replies[5])]
            has_null = has_null or bool(replies[6])
            pipe = redis.pipeline(transaction=False)
            for key in own:
                pipe.zscore(keys.stats_ranked(scope, group_by), key)
            ranked = {key for key, score in zip(own, await pipe.execute(), strict=True) if score is not None}
            unranked_keys = sorted({text(m) for m in unranked} | (set(own) - ranked))
            unranked_count = len(unranked_keys)
        else:
            unranked_count = int(unranked)
        total = ranked_total + unranked_count + int(has_null)
        end = min(offset + limit, total)
        page: list[str | None] = [text(m) for m in replies[3]]
        first, last = max(offset - ranked_total, 0), min(end - ranked_total, unranked_count)
        if first < last:
            if unranked_keys is not None:
                page.extend(unranked_keys[first:last])
            else:
                members = await redis.zrange(keys.stats_unranked(scope, group_by), first, last - 1)
                page.extend(text(m) for m in members)
        if has_null and end == total and offset < total:
            page.append(None)
        return await self._groups(keys, [scope] if extra is None else [scope, extra], group_by, page), total

    async def _groups(self, keys: Keys, scopes: list[str], group_by: str, page: list[str | None]) -> list[Group]:
        if not page:
            return []
        redis = self._rm.redis
        pipe = redis.pipeline(transaction=False)
        for key in page:
            for scope in scopes:
                pipe.hgetall(keys.stats_group(scope, group_by, key))
            if key is not None:
                pipe.zrange(keys.stats_brier(group_by, key), 0, 0, withscores=True)
                pipe.hgetall(keys.stats_agreement(group_by, key))
                pipe.hkeys(keys.stats_judges(group_by, key))
        replies = iter(await pipe.execute())
        groups = []
        judged: list[tuple[str, tuple[str, str]]] = []
        for key in page:
            counts = dict.fromkeys(FIELDS, 0)
            for _ in scopes:
                for field, value in next(replies).items():
                    counts[text(field)] += int(value)
            best: float | None = None
            sums: dict[str, int] = {}
            if key is not None:
                lowest = next(replies)
                best = float(lowest[0][1]) if lowest else None
                sums = _ints(next(replies))
                judged.extend((key, (str(m), str(v))) for m, v in map(orjson.loads, next(replies)))
            groups.append(Group(key, counts, best, sums, {}))
        if judged:  # one more round trip for the groups' per-judge sums (a few judges per group)
            pipe = redis.pipeline(transaction=False)
            for key, judge in judged:
                pipe.hgetall(keys.stats_agreement(group_by, key, judge))
            by_key = {g.key: g for g in groups}
            for (key, judge), raw in zip(judged, await pipe.execute(), strict=True):
                by_key[key].by_judge[judge] = _ints(raw)
        return groups


def _ints(raw: Mapping[Any, Any]) -> dict[str, int]:
    return {text(k): int(v) for k, v in raw.items()}
