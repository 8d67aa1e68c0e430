"""Redis read models: key layout, the namespace pointer, and the readers the API uses.

All domain keys live under a namespace (`<prefix><ns>:...`); `<prefix>ns` names the current one, so the
rebuild (`echelon rebuild`) can write a fresh namespace and switch every reader over with one SET.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple, Self

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

from echelon_platform.adapters.redis_lane import RedisLane
from echelon_platform.domain.partitions import Partitioning
from echelon_platform.domain.projections import READ_MODEL_GENERATION, RunState, Status, from_record
from echelon_platform.domain.values import construct_key, matches_construct
from echelon_platform.errors import ReadModelError

DEFAULT_NAMESPACE = "live"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str
    ns: str

    def _k(self, suffix: str) -> str:
        return f"{self.prefix}{self.ns}:{suffix}"

    def run(self, run_id: str) -> str:
        return self._k(f"run:{run_id}")

    @property
    def runs(self) -> str:
        return self._k("runs")

    def user_runs(self, user_id: str) -> str:
        return self._k(f"user:{user_id}:runs")

    @property
    def active(self) -> str:
        return self._k("runs:active")

    def cert(self, cert_id: str) -> str:
        return self._k(f"cert:{cert_id}")

    def certs_by(self, order: str) -> str:
        """Certificate index by `created`, `brier` or `composite`."""
        return self._k(f"certs:{order}")

    def construct_certs(self, construct_id: str, order: str) -> str:
        """Keyed by the canonical form: every spelling of a construct id shares one index (and one owner)."""
        return self._k(f"construct:{construct_key(construct_id)}:certs:{order}")

    def ratings(self, cert_id: str) -> str:
        """Hash `<replay_id>|<user_id>` → latest rating JSON."""
        return self._k(f"ratings:{cert_id}")

    def user_ratings(self, user_id: str) -> str:
        """Hash `<cert_id>|<replay_id>` → latest rating JSON."""
        return self._k(f"user:{user_id}:ratings")

    def judge_calls(self, run_id: str) -> str:
        """Hash `<log position>` → `[input tokens, output tokens, cost]` of the run's logged judge calls."""
        return self._k(f"judge:{run_id}")

    @property
    def stats_records(self) -> str:
        """Hash run id → the run's leaderboard record (`domain.stats.contribution`)."""
        return self._k("stats:records")

    def stats_group(self, scope: str, group_by: str, key: str | None) -> str:
        """Hash of one leaderboard group's summed counts (`domain.stats.FIELDS`)."""
        return self._k(f"stats:{scope}:{group_by}:null" if key is None else f"stats:{scope}:{group_by}:g:{key}")

    def stats_ranked(self, scope: str, group_by: str) -> str:
        """Groups with a certificate, scored −(mean composite in millionths): ZRANGE is the leaderboard order."""
        return self._k(f"stats:{scope}:{group_by}:ranked")

    def stats_unranked(self, scope: str, group_by: str) -> str:
        """Groups (not the null key) without a certificate, all scored 0: ordered by key."""
        return self._k(f"stats:{scope}:{group_by}:unranked")

    def stats_brier(self, group_by: str, key: str) -> str:
        """Sorted set run id → Brier of the run's public certificate (the group's best is the first)."""
        return self._k(f"stats:{group_by}:brier:{key}")

    def stats_agreement(self, group_by: str, key: str, judge: tuple[str, str] | None = None) -> str:
        """Hash of one agreement set's sums (`domain.stats.agreement_of`): a group's rating pairs, or those
        of one (judge model, methodology version) in it. `<this>:z<v>`: the pairs rated v by composite."""
        if judge is None:
            return self._k(f"stats:{group_by}:agree:{key}")
        return self._k(f"stats:{group_by}:agree-by-judge:{orjson.dumps([key, *judge]).decode()}")

    def stats_judges(self, group_by: str, key: str) -> str:
        """Hash `[judge model, methodology version]` → the group's pairs of that judge."""
        return self._k(f"stats:{group_by}:judges:{key}")

    @property
    def pattern(self) -> str:
        return self._k("*")


def pointer_key(prefix: str) -> str:
    return f"{prefix}ns"


def checkpoint_key(prefix: str, suffix: str = "") -> str:
    """A log partition's read-model checkpoint (`suffix` from `Partitioning.suffix`; see readmodel_writer)."""
    return f"{prefix}checkpoint{suffix}"


def rebuilding_key(prefix: str) -> str:
    """Set from the start of a rebuild until its switch deletes it (with the checkpoints, in one MULTI); `n/m`
    progress. It expires on its own if the rebuild dies: the checkpoints it did not write say the rest."""
    return f"{prefix}rebuilding"


@dataclass(frozen=True, slots=True)
class Freshness:
    """What says the read models are level with the log: no rebuild marker, and every partition's checkpoint
    present, of this build's generation and naming the namespace readers use. The keys, built once."""

    rebuilding: str
    checkpoints: tuple[str, ...]
    generation: int

    @classmethod
    def of(cls, prefix: str, partitioning: Partitioning) -> Freshness:
        return _freshness(prefix, partitioning.count)

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.rebuilding, *self.checkpoints)


@functools.lru_cache(maxsize=64)
def _freshness(prefix: str, count: int) -> Freshness:
    partitioning = Partitioning(count)
    keys = tuple(checkpoint_key(prefix, partitioning.suffix(k)) for k in partitioning.indices)
    return Freshness(rebuilding_key(prefix), keys, READ_MODEL_GENERATION)


# Whether the models are level with the log (`Freshness`): 1 or 0. `ns`: the namespace readers use; KEYS[first]
# the rebuild marker, the KEYS after it every checkpoint (`<generation>:<position>:<namespace>`).
_FRESH_LUA = """
local function models_fresh(ns, first, generation)
  if redis.call('EXISTS', KEYS[first]) == 1 then return 0 end
  local head, tail = generation .. ':', ':' .. ns
  for i = first + 1, #KEYS do
    local cp = redis.call('GET', KEYS[i])
    if (not cp) or string.sub(cp, 1, #head) ~= head or string.sub(cp, -#tail) ~= tail then return 0 end
  end
  return 1
end
"""


def lock_key(prefix: str, suffix: str = "") -> str:
    """The projector lock of one log partition (`suffix` from `Partitioning.suffix`)."""
    return f"{prefix}lock:projector{suffix}"


def text(value: Any) -> str:
    """redis-py answers bytes (our client does not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def millis(state: RunState) -> float:
    return state.created_at.timestamp() * 1000 if state.created_at else 0.0


class RedisClient:
    """Owns one redis.asyncio client; an async context manager like every resource holder."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self._redis: aioredis.Redis | None = None

    async def __aenter__(self) -> Self:
        self._redis = aioredis.Redis.from_url(
            self.url, health_check_interval=10, socket_connect_timeout=5, retry_on_timeout=True
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise ReadModelError("redis client is not open")
        return self._redis

    async def namespace(self) -> str:
        value = await self.redis.get(pointer_key(self.prefix))
        return text(value) if value else DEFAULT_NAMESPACE

    async def keys(self) -> Keys:
        return Keys(self.prefix, await self.namespace())

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"Redis unreachable: {exc}") from exc


# Resolve the namespace pointer and read one key in that namespace, in one round trip (`ReadModels.get_run`:
# a stage's guard asks before every paid call). KEYS: the pointer. ARGV: default namespace, key before and after it.
_GET_IN_CURRENT_NAMESPACE = """
local ns = redis.call('GET', KEYS[1]) or ARGV[1]
return redis.call('GET', ARGV[2] .. ns .. ARGV[3])
"""


class ReadModels(RedisClient):
    """Read-only access for the API, CLI and workers."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix)
        self._get_in_namespace: AsyncScript | None = None

    async def freshness_state(self, freshness: Freshness) -> tuple[bytes | None, bytes | None, list[bytes | None]]:
        """In one round trip: the namespace readers use (None: the default), the rebuild marker (None: not
        rebuilding) and every partition's raw checkpoint (None: missing). ReadModelError when unreachable."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(pointer_key(self.prefix))
        pipe.get(freshness.rebuilding)
        for key in freshness.checkpoints:
            pipe.get(key)
        try:
            namespace, marker, *checkpoints = await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ReadModelError(f"unreachable: {exc}") from exc
        return namespace, marker, checkpoints

    async def get_run(self, run_id: str) -> RunState | None:
        if self._get_in_namespace is None or self._get_in_namespace.registered_client is not self.redis:
            self._get_in_namespace = self.redis.register_script(_GET_IN_CURRENT_NAMESPACE)
        before, _, after = Keys(self.prefix, _NS_MARK).run(run_id).partition(_NS_MARK)
        raw = await self._get_in_namespace(keys=[pointer_key(self.prefix)], args=[DEFAULT_NAMESPACE, before, after])
        return from_record(orjson.loads(raw)) if raw else None

    async def list_runs(
        self,
        *,
        user_id: str | None,
        status: Status | None = None,
        construct_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[RunState], int]:
        """Newest first; `user_id=None` lists everyone's (admins). `created_after` is inclusive,
        `created_before` exclusive (the index is scored by creation time in ms)."""
        keys = await self.keys()
        index = keys.runs if user_id is None else keys.user_runs(user_id)
        low = created_after.timestamp() * 1000 if created_after is not None else "-inf"
        high = f"({created_before.timestamp() * 1000!r}" if created_before is not None else "+inf"
        if status is None and construct_id is None:
            total = int(await self.redis.zcount(index, low, high))
            ids = await self.redis.zrevrangebyscore(index, high, low, start=offset, num=limit)
            return await self._load(keys, ids), total
        # Filtered: walk the index newest first; per-user run counts stay small.
        ids = await self.redis.zrevrangebyscore(index, high, low)
        states = [
            s
            for s in await self._load(keys, ids)
            if (status is None or s.status is status) and matches_construct(s.construct_id, construct_id)
        ]
        return states[offset : offset + limit], len(states)

    async def _load(self, keys: Keys, ids: list[Any]) -> list[RunState]:
        if not ids:
            return []
        raws = await self.redis.mget([keys.run(text(i)) for i in ids])
        return [from_record(orjson.loads(r)) for r in raws if r]

    async def active_runs(self, updated_before_ms: float) -> list[RunState]:
        keys = await self.keys()
        ids = await self.redis.zrangebyscore(keys.active, "-inf", updated_before_ms)
        return await self._load(keys, ids)

    async def get_certificate(self, cert_id: str) -> dict[str, Any] | None:
        keys = await self.keys()
        raw = await self.redis.get(keys.cert(cert_id))
        return orjson.loads(raw) if raw else None

    async def list_certificates(
        self, *, construct_id: str | None = None, sort: str = "created_desc", limit: int = 20, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """Full certificates in a stable order: `created_desc`, `brier_asc` or `composite_desc`.

        Ties are broken by certificate id (Redis orders equal scores lexicographically).
        """
        keys = await self.keys()
        order, descending = {
            "created_desc": ("created", True),
            "brier_asc": ("brier", False),
            "composite_desc": ("composite", True),
        }[sort]
        index = keys.construct_certs(construct_id, order) if construct_id else keys.certs_by(order)
        total = int(await self.redis.zcard(index))
        end = offset + limit - 1
        ids = await (self.redis.zrevrange(index, offset, end) if descending else self.redis.zrange(index, offset, end))
        if not ids:
            return [], total
        raws = await self.redis.mget([keys.cert(text(i)) for i in ids])
        return [orjson.loads(r) for r in raws if r], total

    async def all_certificate_ids(self) -> list[str]:
        keys = await self.keys()
        return [text(i) for i in await self.redis.zrange(keys.certs_by("created"), 0, -1)]

    async def ratings(self, *, certificate_id: str | None, user_id: str | None) -> list[dict[str, Any]]:
        """Latest rating per (user, replay), filtered by certificate and/or user; stable order."""
        keys = await self.keys()
        if certificate_id is not None:
            values = await self.redis.hvals(keys.ratings(certificate_id))
        elif user_id is not None:
            values = await self.redis.hvals(keys.user_ratings(user_id))
        else:
            values = []
            for cert_id in await self.all_certificate_ids():
                values.extend(await self.redis.hvals(keys.ratings(cert_id)))
        rows: list[dict[str, Any]] = [orjson.loads(v) for v in values]
        rows = [r for r in rows if user_id is None or r["user_id"] == user_id]
        return sorted(rows, key=lambda r: (r["certificate_id"], r["replay_id"], r["user_id"]))


CHUNK = 1000  # keys per MGET / commands per pipeline: bounded replies, few round trips


# Resolve the namespace pointer, read the key and say whether the models are level with the log, in one round
# trip (the hot path of GET /runs/{id}): {fresh (1/0), the value or false}.
_GET_IN_NAMESPACE = (
    _FRESH_LUA
    + """
local ns = redis.call('GET', KEYS[1]) or ARGV[3]
return {models_fresh(ns, 2, ARGV[4]), redis.call('GET', ARGV[1] .. ns .. ARGV[2])}
"""
)
_NS_MARK = "\x00ns\x00"
_ID_MARK = "\x00id\x00"


class Checked(NamedTuple):
    """A read-model value and whether the models were level with the log when it was read (`Freshness`):
    when they are not, a missing or older value says nothing about the log."""

    value: Any
    fresh: bool


class NamespacedGet:
    """GET of one key kind (`Keys.run`, `Keys.cert`) in the current namespace, checked (`Checked`), in one
    Redis round trip; with a lane (the API's hot path) on the lane's pipelined connection."""

    def __init__(
        self, read_models: ReadModels, kind: Callable[[Keys], str], freshness: Freshness, lane: RedisLane | None
    ) -> None:
        self._keys = (pointer_key(read_models.prefix), *freshness.keys)
        self._generation = str(freshness.generation)
        # The key around the namespace and the id, split once (not on every call).
        self._before, _, after = kind(Keys(read_models.prefix, _NS_MARK)).partition(_NS_MARK)
        self._head, _, self._tail = after.partition(_ID_MARK)
        self._script = read_models.redis.register_script(_GET_IN_NAMESPACE)
        self._lane_script = lane.script(_GET_IN_NAMESPACE) if lane is not None else None

    async def __call__(self, key_id: str) -> Checked:
        args = (self._before, f"{self._head}{key_id}{self._tail}", DEFAULT_NAMESPACE, self._generation)
        if self._lane_script is not None:
            fresh, raw = await self._lane_script(self._keys, args)
        else:
            fresh, raw = await self._script(keys=list(self._keys), args=list(args))
        return Checked(raw or None, bool(fresh))


class RunReader:
    """`ReadModels.get_run` in one Redis round trip instead of two, checked (`Checked`); the key layout stays
    `Keys`'s. With a lane (the API's hot path), the round trip shares the lane's pipelined connection."""

    def __init__(self, read_models: ReadModels, lane: RedisLane | None = None, *, freshness: Freshness) -> None:
        self._get = NamespacedGet(read_models, lambda k: k.run(_ID_MARK), freshness, lane)

    async def checked(self, run_id: str) -> tuple[RunState | None, bool]:
        raw, fresh = await self._get(run_id)
        return (from_record(orjson.loads(raw)) if raw else None), fresh

    async def get(self, run_id: str) -> RunState | None:
        return (await self.checked(run_id))[0]


class CertificateReader:
    """`ReadModels.get_certificate`, checked (`Checked`), in one round trip."""

    def __init__(self, read_models: ReadModels, freshness: Freshness) -> None:
        self._get = NamespacedGet(read_models, lambda k: k.cert(_ID_MARK), freshness, None)

    async def checked(self, cert_id: str) -> tuple[dict[str, Any] | None, bool]:
        raw, fresh = await self._get(cert_id)
        return (orjson.loads(raw) if raw else None), fresh


# A construct's owner (the user of its first certificate's run) in one round trip: namespace pointer, the
# construct's oldest certificate, that certificate's run, the run's user. A Lua function, so that POST /runs
# can call it inside its own admission script; the key parts come from `Keys` (see `OwnerReader.arguments`).
CONSTRUCT_OWNER_LUA = """
local function construct_owner(pointer, default_ns, prefix, certs, cert, run)
  local ns = redis.call('GET', pointer) or default_ns
  local first = redis.call('ZRANGE', prefix .. ns .. certs, 0, 0)[1]
  if not first then return false end
  local c = redis.call('GET', prefix .. ns .. cert .. first)
  if not c then return false end
  local r = redis.call('GET', prefix .. ns .. run .. cjson.decode(c)['run_id'])
  if not r then return false end
  local user = cjson.decode(r)['user_id']
  if type(user) ~= 'string' then return false end
  return user
end
"""
_OWNER_IN_NAMESPACE = CONSTRUCT_OWNER_LUA + "return construct_owner(KEYS[1], unpack(ARGV))\n"


class OwnerReader:
    """Who owns a construct_id (the first to certify it), in one Redis round trip: it is read on every POST."""

    def __init__(self, read_models: ReadModels) -> None:
        self._rm = read_models
        self._script = read_models.redis.register_script(_OWNER_IN_NAMESPACE)
        keys = Keys(read_models.prefix, _NS_MARK)
        self.pointer = pointer_key(read_models.prefix)
        # The namespace-independent key parts, split once: only the construct's index varies per call.
        self._cert = keys.cert(_ID_MARK).partition(_NS_MARK)[2].removesuffix(_ID_MARK)
        self._run = keys.run(_ID_MARK).partition(_NS_MARK)[2].removesuffix(_ID_MARK)

    def arguments(self, construct_id: str) -> tuple[str, ...]:
        """`construct_owner`'s arguments after the pointer key (KEYS[1] of the script that calls it)."""
        before, _, certs = Keys(self._rm.prefix, _NS_MARK).construct_certs(construct_id, "created").partition(_NS_MARK)
        return (DEFAULT_NAMESPACE, before, certs, self._cert, self._run)

    async def owner(self, construct_id: str) -> str | None:
        raw = await self._script(keys=[self.pointer], args=list(self.arguments(construct_id)))
        return text(raw) if raw else None


def _ids(members: Any) -> list[str]:
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


class BulkReader:
    def __init__(self, read_models: ReadModels) -> None:
        self._rm = read_models

    async def all_runs(self) -> list[RunState]:
        keys = await self._rm.keys()
        ids = _ids(await self._rm.redis.zrange(keys.runs, 0, -1))
        out: list[RunState] = []
        for start in range(0, len(ids), CHUNK):
            raws = await self._rm.redis.mget([keys.run(i) for i in ids[start : start + CHUNK]])
            out.extend(from_record(orjson.loads(raw)) for raw in raws if raw)
        return out

    async def all_certificates(self) -> list[dict[str, Any]]:
        keys = await self._rm.keys()
        ids = _ids(await self._rm.redis.zrange(keys.certs_by("created"), 0, -1))
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), CHUNK):
            raws = await self._rm.redis.mget([keys.cert(i) for i in ids[start : start + CHUNK]])
            out.extend(orjson.loads(raw) for raw in raws if raw)
        return out

    async def ratings_of(self, cert_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Latest rating per (replay, user) of each certificate."""
        keys = await self._rm.keys()
        out: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(cert_ids), CHUNK):
            chunk = cert_ids[start : start + CHUNK]
            pipe = self._rm.redis.pipeline(transaction=False)
            for cert_id in chunk:
                pipe.hvals(keys.ratings(cert_id))
            for cert_id, values in zip(chunk, await pipe.execute(), strict=True):
                out[cert_id] = [orjson.loads(v) for v in values]
        return out
