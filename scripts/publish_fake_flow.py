"""Publish realistic fake flows (runs with progress, failures and signed certificates) at a chosen rate,
with no oracle and no judge: to look at the dashboard and the WebSocket under load, or to load-test them.

Starts a stack without stage workers (embedded servers under --data-dir, or the configured URLs; the API
and the coordinator) unless --into-running is given, publishes through the bus as the operator role, and
keeps serving until Ctrl-C (or exits when done with --exit-when-done).

    python scripts/publish_fake_flow.py --runs 200 --rate 100
    python scripts/publish_fake_flow.py --runs 1000 --rate 2000 --exit-when-done --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from echelon.endpoint import endpoint_file
from echelon.fake_flow import FlowConfig, publish_flows
from echelon.stack import infrastructure, stack_up
from echelon_platform.adapters.services import Services
from echelon_platform.adapters.signing_keys import load_keyring, publish_keys
from echelon_platform.config import Settings
from echelon_platform.domain.roles import Role
from echelon_platform.log_config import configure_logging


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=50, help="runs to publish")
    p.add_argument("--replays", type=_range, default=(3, 12), help="changes per run: N or LOW-HIGH")
    p.add_argument("--rate", type=float, default=50.0, help="events per second, all runs together")
    p.add_argument("--concurrent", type=int, default=8, help="runs in flight at once")
    p.add_argument("--fail-runs", type=float, default=0.1, help="share of runs failing at ingest")
    p.add_argument("--fail-replays", type=float, default=0.1, help="share of replays failing")
    p.add_argument("--user", default="local", help="the runs' owner (the CLI's user by default)")
    p.add_argument("--seed", type=int, help="the same seed gives the same flows")
    p.add_argument("--data-dir", type=Path, default=Path(".echelon/fake-flow"), help="the stack's data directory")
    p.add_argument("--api-port", type=int, default=8010, help="the stack's API port (0: any free port)")
    p.add_argument("--into-running", action="store_true", help="publish into the stack that runs there already")
    p.add_argument("--exit-when-done", action="store_true", help="stop the stack once everything is published")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    return p


async def _wait_for_api(data_dir: Path, server: asyncio.Task[int] | None, deadline_s: float = 120.0) -> str:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if server is not None and server.done():
            raise SystemExit(f"publish_fake_flow: the stack stopped at start (exit {server.result()})")
        try:
            return str(json.loads(endpoint_file(data_dir).read_text())["url"])
        except (OSError, ValueError, KeyError):
            await asyncio.sleep(0.1)
    raise SystemExit(f"publish_fake_flow: no API in {data_dir} after {deadline_s:g} s")


async def main(args: argparse.Namespace) -> int:
    # The stack's role processes read their settings from the environment. No stage workers here: readiness
    # must not wait for their consumers.
    os.environ.update(
        {
            "ECHELON_DATA_DIR": str(args.data_dir.resolve()),
            "ECHELON_API_PORT": str(args.api_port),
            "ECHELON_READY_STAGES": "[]",
        }
    )
    settings = Settings()
    configure_logging(settings.log_level, json=not sys.stderr.isatty())  # logs on stderr, the report on stdout
    config = FlowConfig(
        runs=args.runs,
        replays=args.replays,
        rate=args.rate,
        concurrent=args.concurrent,
        run_failure=args.fail_runs,
        replay_failure=args.fail_replays,
        user=args.user,
        seed=args.seed,
    )
    # No stage workers: they would act on the fake replays and call the oracle.
    stack = None if args.into_running else asyncio.create_task(stack_up(settings, with_stages=False))
    url = await _wait_for_api(settings.data_dir, stack)
    print(f"dashboard: {url}/  (runs of user {config.user!r}: `echelon token {config.user}` to sign in)", flush=True)
    async with (
        infrastructure(settings) as resolved,
        Services(resolved, name="echelon-fake-flow", role=Role.OPERATOR) as services,
    ):
        keyring = load_keyring(resolved)  # the stack's own key: its certificates verify like real ones
        await publish_keys(services.store, keyring)
        report = await publish_flows(services.bus.publish_many, config, keyring.sign)
    line = {"runs": report.runs, "events": report.events, "seconds": round(report.seconds, 3)}
    line["events_per_second"] = round(report.events_per_second, 1)
    print(json.dumps(line) if args.json else f"published {report.events} events of {report.runs} runs "
          f"in {report.seconds:.1f} s ({report.events_per_second:.0f} events/s)", flush=True)  # fmt: skip
    if stack is None:
        return 0
    if args.exit_when_done:
        os.kill(os.getpid(), signal.SIGTERM)  # the stack's own clean stop
    return await stack


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_parser().parse_args())))
