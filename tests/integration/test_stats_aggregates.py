"""`/stats` from projected aggregates equals the scan it replaced (`api/stats_scan.py`) on a generated log:
as the live coordinator projects it, re-projected in shuffled batches with duplicates (several seeds), after
a rebuild from the log and after a partition's repair; every viewer (anonymous, a user, an admin), both
groupings, and pages. The rate limit answers 429 with Retry-After."""

from __future__ import annotations

import random
from typing import Any

import httpx
from ulid import ULID

from api.app import create_app
from api.auth import Principal
from api.options import ApiOptions
from api.stats import stats_row
from api.stats_scan import countable_runs, leaderboard
from coordinator.admission import TrustedKeys
from coordinator.rebuild import Rebuilder, repair_partition, snapshot, verify
from echelon_platform.adapters.readmodel_store import DEFAULT_NAMESPACE, BulkReader, Keys, ReadModels
from echelon_platform.adapters.readmodel_writer import Checkpoint, Projector, checkpoint_key
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import Keyring, load_keyring, publish_keys
from echelon_platform.adapters.stats_store import StatsReader
from echelon_platform.config import Settings
from echelon_platform.domain.envelope import Envelope
from echelon_platform.domain.events import CertificateIssued, JudgeCalled, RatingSubmitted, RunFailed, make_event
from echelon_platform.domain.projections import READ_MODEL_GENERATION
from echelon_platform.domain.stats import ALL, PUBLIC, user_scope
from tests.factories import T0
from tests.integration.test_api_support import API, auth, certified_run, drain, http_client, publish

USERS = ("alice", "bob", "carol")
CONSTRUCTS = ("oracle-a", "oracle-b", "oracle-c", "oracle-d")
VIEWERS: tuple[Principal | None, ...] = (None, Principal("alice"), Principal("bob"), Principal("root", is_admin=True))


def judge_call(run_id: str, replay_id: str, n: int, rng: random.Random) -> Envelope:
    return make_event(
        JudgeCalled(
            run_id=run_id,
            replay_id=replay_id,
            call_key=f"{replay_id}:score:offline:{n}:{n:016x}",
            judge="offline",
            model="offline-lexical-v1",
            purpose="score",
            round_trip=1,
            prompt_sha256="0" * 64,
            methodology_version="v1",
            input_tokens=rng.randint(0, 900),
            output_tokens=rng.randint(0, 300),
            cost_usd=round(rng.uniform(0, 0.02), 7),
            raw_text="{}",
            usable=True,
        )
    )


def rating(run_id: str, cert_id: str, replay_id: str, user: str, value: int, n: int) -> Envelope:
    return make_event(
        RatingSubmitted(
            run_id=run_id,
            rating_id=f"{run_id}-{user}-{n}",
            certificate_id=cert_id,
            replay_id=replay_id,
            user_id=user,
            rating=value,
            rated_at=T0,
        )
    )


def generated_log(rng: random.Random, keyring: Keyring, runs: int = 36) -> list[Envelope]:
    """Certified runs (some rated, some rated again), failed ones, pending ones, one certificate logged after
    its run failed (never public), judge calls, runs from before judge calls were logged."""
    log: list[Envelope] = []
    for i in range(runs):
        run_id = f"S{i:03d}"
        user, construct = rng.choice(USERS), rng.choice(CONSTRUCTS)
        scores = [
            {
                "supported": rng.randint(0, 4),
                "surfaced": rng.randint(0, 4),
                "accuracy": round(rng.random(), 4),
                "model": rng.choice(("judge-x", "judge-y")),
                "latency_ms": round(rng.uniform(1, 500), 3),
                "tokens": (rng.randint(0, 900), rng.randint(0, 300)),
                "cost": round(rng.uniform(0, 0.01), 7),
            }
            for _ in range(rng.randint(1, 3))
        ]
        events, cert = certified_run(run_id, user=user, construct=construct, scores=scores, keyring=keyring)
        *work, issued, _completed = events
        kind = i % 6
        if kind in (0, 1, 2):
            log += events
            for n in range(rng.randint(0, 4)):
                replay = rng.choice(cert.individual_scores).replay_id
                log.append(rating(run_id, cert.certificate_id, replay, rng.choice(USERS), rng.randint(1, 5), n))
        elif kind == 3:
            log += [*work, make_event(RunFailed(run_id=run_id, reason="all replays failed", stage="certify"))]
        elif kind == 4:
            log += work[: rng.randint(1, len(work))]  # still running
        else:
            failed = make_event(RunFailed(run_id=run_id, reason="timed out", stage="watchdog"))
            log += [*work, failed, issued] if i == 5 else [*work, failed]
        if rng.random() < 0.6:  # judge calls logged (else: a run from before they were)
            calls = [judge_call(run_id, f"{run_id}-0000", n, rng) for n in range(rng.randint(1, 3))]
            log += calls
    # Rescores of the first certified runs (by another judge, rated too): listed, never counted again.
    for n, source in enumerate([e for e in log if e.topic == CertificateIssued.TOPIC][:2]):
        cert = source.payload["certificate"]
        scores = [{"model": "judge-z", "latency_ms": 9.0, "tokens": (7, 7), "cost": 0.001}] * len(
            cert["individual_scores"]
        )
        run_id = f"RESCORE{n}"
        events, again = certified_run(
            run_id,
            user="bob",
            construct=cert["construct_id"],
            scores=scores,
            keyring=keyring,
            rescored_from=cert["certificate_id"],
        )
        log += [*events, rating(run_id, again.certificate_id, again.individual_scores[0].replay_id, "carol", 5, 0)]
        log.append(judge_call(run_id, f"{run_id}-0000", 0, rng))
    for n, construct in enumerate(("oracle-solo", "oracle-alone")):  # constructs without any certificate
        events, _ = certified_run(f"SOLO{n}", user="alice", construct=construct, keyring=keyring)
        log += events[:2]
    return log


async def scanned(services: Services, viewer: Principal | None, group_by: Any) -> list[Any]:
    """The old computation, over the read models the live coordinator projected."""
    reader = BulkReader(services.read_models)
    certs = await reader.all_certificates()
    ratings = await reader.ratings_of([c["certificate_id"] for c in certs])
    countable = countable_runs(await reader.all_runs(), certs, viewer)
    usage = await services.store.judge_usage([run.run_id for run in countable])
    return leaderboard(countable, certs, ratings, group_by, usage)


async def projected(read_models: ReadModels, viewer: Principal | None, group_by: str, **page: int) -> list[Any]:
    if viewer is None:
        scope, extra = PUBLIC, None
    elif viewer.is_admin:
        scope, extra = ALL, None
    else:
        scope, extra = PUBLIC, user_scope(viewer.user_id)
    offset, limit = page.get("offset", 0), page.get("limit", 100)
    groups, total = await StatsReader(read_models).page(
        scope=scope, extra=extra, group_by=group_by, offset=offset, limit=limit
    )
    return [total, [stats_row(g) for g in groups]]


async def assert_equal_to_scan(services: Services, read_models: ReadModels) -> None:
    for viewer in VIEWERS:
        for group_by in ("construct_id", "scoring_model"):
            expected = await scanned(services, viewer, group_by)
            assert await projected(read_models, viewer, group_by) == [len(expected), expected], (viewer, group_by)
            assert await projected(read_models, viewer, group_by, offset=1, limit=2) == [len(expected), expected[1:3]]
            tail = max(len(expected) - 2, 0)  # the last rows: unranked groups and the null key come last
            assert await projected(read_models, viewer, group_by, offset=tail, limit=5) == [
                len(expected),
                expected[tail:],
            ]


def aggregates(snap: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in snap.items() if k.startswith(("stats:", "judge:"))}


async def reproject_shuffled(settings: Settings, services: Services, seed: int) -> tuple[str, dict[str, bytes]]:
    """Every logged event projected again into a fresh prefix: shuffled, a third of them twice, in batches
    of random sizes. Returns the prefix and its aggregate keys."""
    rng = random.Random(seed)
    logged = [(event, seq) async for seq, event in services.store.stream(after_seq=0)]
    delivered = logged + rng.sample(logged, len(logged) // 3)
    rng.shuffle(delivered)
    prefix = f"{settings.redis_prefix}shuffled{seed}:"
    async with Projector(str(settings.redis_url), prefix) as projector:
        start = Checkpoint(READ_MODEL_GENERATION, 0, DEFAULT_NAMESPACE)
        await projector.redis.set(checkpoint_key(prefix), start.encode())
        while delivered:
            size = rng.randint(1, 12)
            batch, delivered = delivered[:size], delivered[size:]
            await projector.project(batch)
        return prefix, aggregates(await snapshot(projector, Keys(prefix, DEFAULT_NAMESPACE)))


async def test_aggregates_equal_the_scan_live_shuffled_rebuilt_and_repaired(
    settings: Settings, services: Services
) -> None:
    keyring = load_keyring(settings)
    await publish_keys(services.store, keyring)
    log = generated_log(random.Random(18), keyring)
    await publish(services, log)
    # Judge calls published again under a new event id and message id (the same dedup key): the log keeps
    # one, and the projector sees the copy at the first one's position, so it is counted once.
    for call in [e for e in log if e.topic == "verify.judge.called"][:3]:
        again = call.model_copy(update={"event_id": str(ULID())})
        subject = services.subjects.subject(call.topic, call.run_id)
        await services.bus.publish_raw(subject, again.to_wire(), msg_id=f"again-{again.event_id}")
    await drain(services, settings)
    # The log exercises every rule: failures, ratings (per judge), judge calls, several groups per view.
    admin = await scanned(services, Principal("root", is_admin=True), "construct_id")
    anonymous = await scanned(services, None, "scoring_model")
    assert (
        len(admin) == len(CONSTRUCTS) + 2
        and admin[-1].certificates == 0
        and sum(r.failed for r in admin) > 0
        and sum(r.certificates for r in admin) > 5
    )
    # A rescore's certificate is listed but not counted: the certificates counted are the others.
    listed = await BulkReader(services.read_models).all_certificates()
    rescores = [c for c in listed if c.get("rescored_from")]
    assert len(rescores) == 2 and sum(r.certificates for r in admin) == len(listed) - 2
    assert all(r.key != "judge-z" or r.certificates == 0 for r in await scanned(services, None, "scoring_model"))
    assert any(r.human_spearman is not None for r in anonymous) and len(anonymous) >= 2
    assert sum(r.runs for r in await scanned(services, Principal("alice"), "construct_id")) > sum(
        r.runs for r in await scanned(services, None, "construct_id")
    )
    await assert_equal_to_scan(services, services.read_models)
    async with Projector(str(settings.redis_url), settings.redis_prefix) as projector:
        live = aggregates(await snapshot(projector, await projector.keys()))
        assert any(k.startswith("stats:public:") for k in live) and any(k.startswith("judge:") for k in live)

        for seed in (1, 2, 3):  # order and duplicates cannot change a single aggregate key
            prefix, shuffled = await reproject_shuffled(settings, services, seed)
            assert shuffled == live, f"seed {seed}"
            async with ReadModels(str(settings.redis_url), prefix) as other:
                await assert_equal_to_scan(services, other)

        trusted = TrustedKeys.published(services.store, settings)
        report = await Rebuilder(services.store, projector, trusted).rebuild()
        assert aggregates(await snapshot(projector, Keys(settings.redis_prefix, report.namespace))) == live
        await assert_equal_to_scan(services, services.read_models)
        assert (await verify(services.store, projector, settings)).differences == []

        # A partition's repair refolds its runs against the live records: nothing moves twice.
        await repair_partition(services.store, projector, 0, settings)
        assert aggregates(await snapshot(projector, await projector.keys())) == live


async def test_stats_is_rate_limited_per_client_address(settings: Settings, services: Services) -> None:
    """The bug: /stats had no rate limit; each call scanned every run."""
    tuned = settings.model_copy(update={"stats_per_minute": 3})
    app = create_app(tuned, services, options=ApiOptions())
    other = httpx.ASGITransport(app, client=("192.0.2.7", 1234))
    async with http_client(app) as client, httpx.AsyncClient(transport=other, base_url="http://api") as elsewhere:
        for _ in range(3):
            assert (await client.get(f"{API}/stats")).status_code == 200
        refused = await client.get(f"{API}/stats", headers=auth(settings, "alice"))  # signing in changes nothing
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "stats" in refused.json()["detail"]
        assert (await elsewhere.get(f"{API}/stats")).status_code == 200  # another address: its own window
