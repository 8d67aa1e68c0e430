"""Implementations of the `echelon` sub-commands (see cli.py for their arguments)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from echelon_platform.config import Settings
from echelon_platform.recursion import check_recursion_limit

# Each command imports what it needs when it runs: loading the API, workers and their libraries costs
# seconds, and `echelon token` or `echelon verify` need none of it.


async def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from echelon.local_roots import dev_stack_roots
    from echelon.stack import stack_up

    check_recursion_limit()  # before serving anything (each role process checks again after its imports)
    return await stack_up(dev_stack_roots(settings), with_api=not args.no_api)


async def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import create_app
    from echelon.http_server import api_server_config
    from echelon.lifecycle import STOP_GRACE_S, run_until_stopped, stop_signals
    from echelon.stack import RoleServer, freeze_startup_heap, infrastructure

    check_recursion_limit()
    settings.check_api_exposure()  # before starting anything: one line, exit 1
    with stop_signals() as stop:
        async with infrastructure(settings) as resolved:
            config = api_server_config(
                create_app(resolved),
                resolved,
                # Open connections (a WebSocket stream) never hold a stop up for longer than this.
                timeout_graceful_shutdown=int(STOP_GRACE_S) - 1,
            )
            server = RoleServer(config, resolved)
            freeze_startup_heap()

            def request_stop() -> None:
                server.should_exit = True

            return await run_until_stopped("api", [server.serve()], request_stop, stop)


async def cmd_coordinator(args: argparse.Namespace, settings: Settings) -> int:
    from echelon.coordinator_role import serve_coordinator

    check_recursion_limit()
    # A standby until it holds the writer lease (ECHELON_WRITER_PARTITION); exits 1 if the loop ends
    # without a signal, so a supervisor restarts it.
    return await serve_coordinator(settings)


async def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from echelon.lifecycle import run_until_stopped, stop_signals
    from echelon.stack import freeze_startup_heap, infrastructure
    from echelon_platform.adapters.services import Services
    from echelon_platform.domain.roles import stage_groups
    from echelon_platform.domain.stages import STAGE_NAMES
    from pipeline_workers.pipeline import Pipeline

    check_recursion_limit()
    chosen = tuple(args.stages) or STAGE_NAMES
    unknown = set(chosen) - set(STAGE_NAMES)
    if unknown:
        print(
            f"echelon: unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(STAGE_NAMES)}",
            file=sys.stderr,
        )
        return 2
    with stop_signals() as stop:
        async with infrastructure(settings) as resolved, contextlib.AsyncExitStack() as stack:
            pipelines: list[Pipeline] = []
            # Each group its own NATS user: the certify stage never shares a connection with another stage.
            for role, stages in stage_groups(chosen):
                services = await stack.enter_async_context(Services(resolved, name=f"echelon-worker-{role}", role=role))
                pipelines.append(await stack.enter_async_context(Pipeline(services, resolved, stages=stages)))
            freeze_startup_heap()

            def request_stop() -> None:
                for pipeline in pipelines:
                    pipeline.stop()

            runs = [p.run(watchdog=i == 0) for i, p in enumerate(pipelines)]  # one watchdog is enough
            return await run_until_stopped("worker", runs, request_stop, stop)


async def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from echelon.stack import infrastructure
    from echelon_platform.adapters.migrations import DEFAULT_DIR, migrate

    async with infrastructure(settings) as resolved:
        applied = await migrate(str(resolved.database_url), args.dir or DEFAULT_DIR)
    print(f"applied {', '.join(applied)}" if applied else "database is up to date")
    return 0


async def cmd_setup(args: argparse.Namespace, settings: Settings) -> int:
    from echelon.setup import set_up
    from echelon.stack import infrastructure

    async with infrastructure(settings) as resolved:
        consumers = await set_up(resolved)
    print(f"stream {resolved.stream_name} and consumers {', '.join(consumers)} are set up")
    return 0


async def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from coordinator.admission import TrustedKeys
    from coordinator.rebuild import Rebuilder, repair_partition, verify
    from echelon.stack import infrastructure
    from echelon_platform.adapters.readmodel_writer import Projector
    from echelon_platform.adapters.services import Services
    from echelon_platform.domain.roles import Role
    from echelon_platform.errors import ConfigError

    async with (
        infrastructure(settings) as resolved,
        Services(resolved, name="echelon-rebuild", role=Role.READER) as services,
        Projector(str(resolved.redis_url), resolved.redis_prefix, partitioning=resolved.partitioning) as projector,
    ):
        if args.partition is not None:
            if args.verify:
                raise ConfigError("--verify compares the whole log: give it without --partition")
            resolved.partitioning.parse(str(args.partition))  # ConfigError naming the valid range
            report = await repair_partition(services.store, projector, args.partition, services.settings)
            print(
                f"partition {args.partition}: refolded {report.runs} runs and {report.certificates} certificates "
                f"from {report.events} events in {report.seconds:.2f}s into {report.namespace}"
            )
            return 0
        if args.verify:
            report = await verify(services.store, projector, services.settings)
            for line in report.differences[:50]:
                print(line)
            print(
                f"{report.events} events, {report.runs} runs, {report.certificates} certificates: "
                f"{len(report.differences)} difference(s)"
            )
            return 1 if report.differences else 0
        report = await Rebuilder(
            services.store, projector, TrustedKeys.published(services.store, services.settings)
        ).rebuild()
        print(
            f"rebuilt {report.runs} runs and {report.certificates} certificates from {report.events} "
            f"events in {report.seconds:.2f}s ({report.events_per_s:,.0f} events/s); "
            f"readers now use {report.namespace}"
        )
    return 0


async def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from echelon.stack import infrastructure
    from echelon.tail import tail
    from echelon_platform.adapters.services import Services
    from echelon_platform.domain.roles import Role

    async with (
        infrastructure(settings) as resolved,
        Services(resolved, name="echelon-tail", role=Role.READER) as services,
    ):
        subject = services.subjects.of_run(args.run_id) if args.run_id else services.subjects.user_pattern(args.subject)
        with contextlib.suppress(asyncio.CancelledError):
            await tail(services.bus, subject, from_start=args.from_start, as_json=args.json)
    return 0


async def cmd_parked(args: argparse.Namespace, settings: Settings) -> int:
    from coordinator.decode import RETRY_HEADER
    from echelon.stack import infrastructure
    from echelon_platform.adapters.services import Services
    from echelon_platform.domain.roles import Role

    async with (
        infrastructure(settings) as resolved,
        Services(resolved, name="echelon-parked", role=Role.OPERATOR) as services,
    ):
        if args.action == "list":
            rows = await services.store.parked(include_retried=args.all)
            for row in rows:
                retried = f" retried {row.retried_at:%Y-%m-%d %H:%M:%S}" if row.retried_at else ""
                print(f"{row.id:>6} seq={row.stream_seq} {row.subject} {row.parked_at:%Y-%m-%d %H:%M:%S}{retried}")
                print(f"       reason: {row.reason}")
            print(f"{len(rows)} parked event(s)")
            return 0
        rows = [r for r in await services.store.parked(limit=10_000) if not args.ids or r.id in args.ids]
        missing = set(args.ids) - {r.id for r in rows}
        if missing:
            print(
                f"echelon: no parked event(s) waiting with id {', '.join(map(str, sorted(missing)))}",
                file=sys.stderr,
            )
            return 1
        for row in rows:
            # Re-driven through the stream like any event; the coordinator marks the row when it sees it.
            await services.bus.publish_raw(
                row.subject,
                row.raw,
                msg_id=f"retry-{row.id}-{row.stream_seq}",
                headers={RETRY_HEADER: str(row.id)},
            )
        print(f"re-published {len(rows)} parked event(s)")
    return 0


def parse_range(text: str) -> tuple[float, float] | None:
    """`5` or `0.3-15` as (low, high) seconds; None when it is not a positive, ordered range."""
    low_text, _, high_text = text.partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if high_text else low
    except ValueError:
        return None
    return (low, high) if 0 < low <= high < float("inf") else None


async def cmd_chaos(args: argparse.Namespace, settings: Settings) -> int:
    import json
    import random

    from echelon.chaos import ChaosConfig, run_chaos
    from echelon.chaos.faults import KINDS

    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else None
    unknown = set(kinds or ()) - set(KINDS)
    outage = parse_range(args.outage_s)
    if unknown or args.rounds < 1 or args.runs_per_second <= 0 or args.overlap < 1 or outage is None:
        print(
            f"echelon: chaos needs --rounds >= 1, --runs-per-second > 0, --overlap >= 1, --outage-s SECONDS or "
            f"LOW-HIGH (0 < LOW <= HIGH), kinds from {','.join(KINDS)}",
            file=sys.stderr,
        )
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    config = ChaosConfig(
        rounds=args.rounds,
        seed=seed,
        runs_per_second=args.runs_per_second,
        duration_s=args.duration_s,
        mean_gap_s=args.mean_gap_s,
        kinds=kinds,
        outage_s=outage,
        overlap=args.overlap,
        work_dir=args.work_dir,
    )
    report = await run_chaos(settings, config)
    print(json.dumps(report, indent=None if args.json else 2, default=str))
    return 0 if report["ok"] else 1


async def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from echelon.devtoken import mint_hs256

    try:
        token = mint_hs256(args.user_id, settings.jwt_secret.get_secret_value(), admin=args.admin, ttl_s=args.ttl)
    except ValueError as exc:
        print(f"echelon token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


async def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from echelon.client import submit_and_watch

    return await submit_and_watch(args, settings)


async def cmd_certificates(args: argparse.Namespace, settings: Settings) -> int:
    from echelon.cert_verify import verify_command
    from echelon.client import api_base

    if args.action == "rederive":
        return await _rederive(args, settings)
    if args.action == "rescore":
        from echelon.rescore_cli import rescore

        return await rescore(args, settings)
    if args.action == "compare":
        from echelon.cert_compare import compare_command

        return await compare_command(args, settings)
    valid, line = await asyncio.to_thread(verify_command, args.certificate, args.keys, api_base(None, settings))
    print(line)
    return 0 if valid else 1


async def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    from echelon.run_history import show_history
    from echelon.runs_cli import get_run, list_runs

    return await {"list": list_runs, "get": get_run, "history": show_history}[args.action](args, settings)


async def _rederive(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from echelon.stack import infrastructure
    from echelon_platform.adapters.event_store import EventStore
    from echelon_platform.adapters.migrations import migrate
    from pipeline_workers.rederive import RederiveError, rederive_from_store

    cert_id = args.certificate_id if args.certificate_id.startswith("cert-") else f"cert-{args.certificate_id}"
    async with infrastructure(settings) as resolved:
        if not settings.infra_configured():
            # A fresh embedded stack (nothing served yet) has no tables: give it the schema a stack would.
            await migrate(str(resolved.database_url))
        async with EventStore(str(resolved.database_url)) as store:
            try:
                result = await rederive_from_store(store, cert_id)
            except RederiveError as exc:
                print(f"{cert_id}: cannot rederive: {exc}", file=sys.stderr)
                return 1
    if args.json:
        document = {
            "certificate_id": cert_id,
            "same": result.same,
            "judge_calls": result.judge_calls,
            "differences": result.differences,
            "rederived": result.rebuilt.model_dump(mode="json"),
        }
        print(json.dumps(document, indent=2))
    elif result.same:
        print(
            f"{cert_id}: rederived from {result.judge_calls} logged judge calls without calling a judge; "
            f"same figures and content hash {result.rebuilt.content_hash}"
        )
    else:
        print(f"{cert_id}: DIFFERS from the log: " + "; ".join(result.differences))
    return 0 if result.same else 1
