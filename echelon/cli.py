"""The `echelon` command. Errors print one line and exit non-zero; no tracebacks for known failures."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echelon.gates import fail_under, max_drop  # argparse types: standard library only

if TYPE_CHECKING:
    from echelon_platform.config import Settings

# Only argparse is loaded before the arguments are parsed: `echelon --help` and a usage error need nothing
# else. pydantic, the settings and asyncio are imported once a command runs.

# Commands that only print for a person: they skip logging set-up (and its imports) to start quickly.
QUIET_COMMANDS = frozenset({"token", "verify", "certificates", "runs"})
# Long-running roles write each event-loop turn's log lines at once (log_config.TickBatchedStream).
BATCHED_LOG_COMMANDS = frozenset({"stack", "api", "coordinator", "worker"})

Command = Callable[[argparse.Namespace, "Settings"], Coroutine[Any, Any, int]]
# Former command names still accepted, and the command each now runs.
ALIASES = {"replay": "rebuild"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echelon", description="Verify AI oracle constructs against git history.")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="run the whole service")
    stack.add_argument("action", choices=["up"])
    stack.add_argument("--no-api", action="store_true", help="coordinator and stages only")
    stack.add_argument("--data-dir", type=Path, help="where embedded servers keep their data")
    sub.add_parser("api", help="run only the HTTP API")
    sub.add_parser("coordinator", help="run only the StateCoordinator")
    worker = sub.add_parser("worker", help="run stage workers")
    worker.add_argument("stages", nargs="*", default=[], help="the stages to run (default: all; docs/stages.md)")

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--dir", type=Path, help="migrations directory (default: db/migrations)")

    sub.add_parser("setup", help="create or update the NATS stream and consumers (as the setup role)")

    # `replay` is the command's former name, kept so scripts using it go on working.
    rebuild = sub.add_parser("rebuild", aliases=["replay"], help="rebuild read models from the event log")
    rebuild.add_argument("--verify", action="store_true", help="compare a rebuild with the live models; no switch")
    rebuild.add_argument(
        "--partition",
        type=int,
        metavar="K",
        help="refold only log partition K into the live models (its writer pauses; the others go on)",
    )

    tail = sub.add_parser("tail", help="follow events live")
    tail.add_argument("subject", nargs="?", default="verify.>", help="subject pattern, e.g. 'verify.run.*'")
    tail.add_argument("--run", dest="run_id", help="only this run's events")
    tail.add_argument("--from-start", action="store_true", help="replay the stream from its first event")
    tail.add_argument("--json", action="store_true", help="raw envelopes as JSON lines")

    parked = sub.add_parser("parked", help="inspect and re-drive poison messages")
    parked.add_argument("action", choices=["list", "retry"])
    parked.add_argument("ids", nargs="*", type=int, help="parked ids to retry (default: all not yet retried)")
    parked.add_argument("--all", action="store_true", help="list retried ones too")

    chaos = sub.add_parser("chaos", help="kill components under load, then check every invariant (JSON report)")
    chaos.add_argument("--rounds", type=int, default=100, help="faults to inject (each component kind at least once)")
    chaos.add_argument("--seed", type=int, help="random seed (the report names the one used)")
    chaos.add_argument("--runs-per-second", type=float, default=1.0, help="load submitted through the API")
    chaos.add_argument("--duration-s", type=float, help="time budget of the fault phase: fewer rounds if spent")
    chaos.add_argument("--mean-gap-s", type=float, default=3.0, help="mean pause between recovery and next fault")
    chaos.add_argument(
        "--kinds", help="comma-separated subset of: coordinator,worker,api,nats,redis,postgres,lock,stop (default: all)"
    )
    chaos.add_argument(
        "--outage-s",
        default="0.3-15",
        help="how long a timed fault lasts (server outage, LOCK TABLE events, SIGSTOP): SECONDS or LOW-HIGH",
    )
    chaos.add_argument("--overlap", type=int, default=1, help="faults of distinct kinds injected at once per round")
    chaos.add_argument(
        "--work-dir",
        type=Path,
        help="logs, embedded servers and the run's database are kept there (default: a temporary one, removed if ok)",
    )
    chaos.add_argument("--json", action="store_true", help="the report on one line")

    token = sub.add_parser("token", help="mint a development JWT from the configured secret")
    token.add_argument("user_id")
    token.add_argument("--admin", action="store_true")
    token.add_argument("--ttl", type=int, default=3600)

    verify = sub.add_parser("verify", help="submit a verification run through the API")
    verify.add_argument(
        "repo", nargs="?", help="https://github.com/owner/repo, a local path, or 'sample' for the bundled repo"
    )
    # Required for a submission only (not with --resume or --dry-run): checked in verify_usage_error.
    target = verify.add_mutually_exclusive_group()
    target.add_argument("--oracle-url")
    target.add_argument("--oracle-callable", help="module:function on the server's allowlist")
    verify.add_argument("--construct-id", default="cli-construct")
    verify.add_argument("--limit", type=int, default=10)
    verify.add_argument("--min-replays", type=int, default=1)
    verify.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="oracle calls per change (1-10): the certificate shows each figure's spread over them",
    )
    verify.add_argument("--github-token")
    verify.add_argument("--watch", action="store_true", help="show progress until the certificate")
    verify.add_argument("--resume", metavar="RUN_ID", help="submit nothing: watch this existing run (as --watch)")
    verify.add_argument(
        "--dry-run", action="store_true", help="start nothing: list the changes a run would take, estimate judge cost"
    )
    verify.add_argument("--json", action="store_true", help="JSON lines: stage events, then the run and certificate")
    verify.add_argument(
        "--api", help="API base URL (default: ECHELON_API_BASE_URL, else http://ECHELON_API_HOST:ECHELON_API_PORT)"
    )
    verify.add_argument("--token", help="Bearer token (default: ECHELON_API_TOKEN, else a local dev token)")
    verify.add_argument(
        "--fail-under",
        type=fail_under,
        metavar="FIGURE=MIN[,…]",
        help="exit 3 when a figure of the certificate is below its minimum, e.g. composite=0.75,recall=0.6 "
        "(figures: composite, precision, recall, reply_accuracy); implies --watch",
    )
    verify.add_argument(
        "--baseline",
        metavar="CERT_ID",
        help="compare the new certificate with this one (paired over the changes both scored); implies --watch",
    )
    verify.add_argument(
        "--max-drop",
        type=max_drop,
        metavar="DROP|FIGURE=DROP[,…]",
        help="with --baseline: exit 3 when a figure fell by more than this (a bare number: the composite; "
        "default 0: any drop of the composite)",
    )

    certs = sub.add_parser("certificates", help="work with issued certificates")
    certs_sub = certs.add_subparsers(dest="action", required=True)
    check = certs_sub.add_parser("verify", help="check a certificate offline: hash, signature, aggregates")
    check.add_argument("certificate", help="a certificate JSON file, or its URL (…/certificates/{id}[/document])")
    check.add_argument(
        "--keys",
        metavar="FILE",
        help="the issuer's public keys, a file in /.well-known/echelon-keys.json form (default: the keys pinned "
        "for the certificate's issuer, recorded on first use in ~/.config/echelon/known_issuers.json)",
    )
    versus = certs_sub.add_parser(
        "compare", help="B against A: paired differences per figure with 95% intervals and a permutation test"
    )
    versus.add_argument("a", help="certificate A (the baseline)")
    versus.add_argument("b", help="certificate B")
    versus.add_argument("--json", action="store_true", help="the comparison as JSON")
    versus.add_argument("--api", help="API base URL (as for `verify`)")
    again = certs_sub.add_parser(
        "rederive", help="rebuild a certificate from the event log (logged judge answers, no judge call)"
    )
    again.add_argument("certificate_id", help="the certificate id (cert-<run id>) or its run id")
    again.add_argument("--json", action="store_true", help="print the rebuilt certificate and the comparison as JSON")

    again = certs_sub.add_parser(
        "rescore",
        help="score a completed run's logged oracle replies with another methodology or judge (admin; no oracle call)",
    )
    again.add_argument("run", help="the run id (or its certificate id, cert-<run id>)")
    again.add_argument("--methodology", required=True, metavar="VERSION", help="a registered methodology, e.g. v1")
    again.add_argument("--judge", help="`offline` or `anthropic:<model>` (default: the score stage's judges)")
    again.add_argument("--watch", action="store_true", help="follow the rescore until its certificate")
    again.add_argument("--json", action="store_true", help="JSON lines instead of text")
    again.add_argument("--api", help="API base URL (as for `verify`)")
    again.add_argument("--token", help="an admin's Bearer token (default: ECHELON_API_TOKEN, else a local admin token)")

    runs = sub.add_parser("runs", help="inspect runs through the API")
    runs_sub = runs.add_subparsers(dest="action", required=True)
    listing = runs_sub.add_parser("list", help="runs, newest first: id, status, progress, created, construct")
    listing.add_argument("--status", help="only runs in this status, e.g. COMPLETED")
    listing.add_argument("--construct-id", help="only runs of this construct")
    listing.add_argument("--limit", type=int, default=20, help="runs per page (at most 100)")
    listing.add_argument("--offset", type=int, default=0, help="skip this many (the next page)")
    get = runs_sub.add_parser("get", help="one run's status, progress and certificate")
    get.add_argument("run_id")
    history = runs_sub.add_parser("history", help="a run's logged events: seq, time, topic, causation")
    history.add_argument("run_id")
    for command in (listing, get, history):
        command.add_argument("--json", action="store_true", help="JSON (history: one object per event)")
        command.add_argument("--api", help="API base URL (as for `verify`)")
        command.add_argument("--token", help="Bearer token (default: ECHELON_API_TOKEN, else a local admin dev token)")
    return parser


def verify_usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with a `verify` command line that argparse alone cannot express, in one line."""
    if args.resume is not None:
        if args.repo is not None or args.dry_run:
            return "--resume RUN_ID watches an existing run: give no repository and no --dry-run"
        if args.oracle_url or args.oracle_callable:
            return "--resume RUN_ID watches an existing run: its oracle was chosen when it was submitted"
        return _gate_usage_error(args)
    if args.repo is None:
        return "verify needs a repository (a GitHub URL, a local path or 'sample'), or --resume RUN_ID"
    if not args.dry_run and not (args.oracle_url or args.oracle_callable):
        return "verify needs --oracle-url or --oracle-callable (or --dry-run to only list the changes)"
    if args.dry_run and (args.fail_under or args.baseline):
        return "--dry-run issues no certificate: --fail-under and --baseline need a run"
    return _gate_usage_error(args)


def _gate_usage_error(args: argparse.Namespace) -> str | None:
    if args.max_drop is not None and args.baseline is None:
        return "--max-drop needs --baseline CERT_ID (the certificate to compare with)"
    return None


def _event_loop_factory(command: str) -> Callable[[], Any] | None:
    if command != "api":
        return None
    import uvloop

    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    args.command = ALIASES.get(args.command, args.command)
    if args.command == "verify" and (problem := verify_usage_error(args)):
        print(f"echelon verify: {problem}", file=sys.stderr)
        sys.exit(2)
    import asyncio

    from pydantic import ValidationError

    from echelon_platform.config import Settings
    from echelon_platform.errors import EchelonError

    try:
        settings = Settings()
        if getattr(args, "data_dir", None):
            settings = settings.model_copy(update={"data_dir": args.data_dir})
        from echelon import commands  # each command imports what it needs (see commands.py)

        # A quiet command's stdout is its result alone; one that starts the servers (rederive) logs on
        # stderr, warnings only, so `--json` output still parses.
        reaches_servers = (args.command, getattr(args, "action", None)) == ("certificates", "rederive")
        if args.command not in QUIET_COMMANDS or reaches_servers:
            from echelon_platform.log_config import configure_logging

            # JSON lines for machines; readable lines in a terminal.
            configure_logging(
                "WARNING" if reaches_servers else settings.log_level,
                json=not sys.stderr.isatty(),
                batched=args.command in BATCHED_LOG_COMMANDS,
            )

        handler: Command = getattr(commands, f"cmd_{args.command}")
        # The API server runs on uvloop (as `uvicorn` itself would pick): its event loop and transports are
        # C, which is most of an HTTP request's CPU outside the route.
        with asyncio.Runner(loop_factory=_event_loop_factory(args.command)) as runner:
            code: int = runner.run(handler(args, settings))
    except KeyboardInterrupt:
        code = 130
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"echelon: invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        code = 2
    except (EchelonError, OSError) as exc:
        print(f"echelon: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:
        # httpx is imported only by the commands that use it; its errors are known failures too.
        httpx = sys.modules.get("httpx")
        if httpx is None or not isinstance(exc, httpx.HTTPError):
            raise
        print(f"echelon: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":  # `python -m echelon.cli ...`, e.g. from a checkout without the entry point
    main()
