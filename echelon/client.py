"""`echelon verify`: submit a run through the API, show live progress, print the certificate."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
from typing import Any

import httpx

from echelon.devtoken import mint_hs256
from echelon.endpoint import newest_stack, read_endpoint
from echelon.gates import GATE_FAILED, check_fail_under, check_max_drop
from echelon.gates import as_json as gates_json
from echelon.repo_arg import repo_ref
from echelon.watch import Progress, StreamUnavailable, follow
from echelon_platform.config import Settings
from echelon_platform.domain.lifecycle import Status
from echelon_platform.errors import EchelonError

TERMINAL = frozenset(s.name for s in Status if s.terminal)  # the run statuses that end a wait
ENDED_REPLAY_S = 10.0  # --resume of an ended run: how long its stages may take to come back from the stream


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:200]
    if isinstance(detail, list):  # FastAPI validation errors
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail)
    raise EchelonError(f"API answered {response.status_code}: {detail}")


def _reason(exc: BaseException) -> str:
    """The root cause of a failed connection in a few words (httpx only says "All connection attempts failed")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return f"host not found: {seen.strerror}"
        if isinstance(seen, TimeoutError | httpx.TimeoutException):
            return "timed out"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def unreachable(base: str, exc: httpx.HTTPError) -> EchelonError:
    """One actionable line: which URL was tried, why it failed, and how to point the CLI elsewhere."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return EchelonError(
            f"no API at {base} ({_reason(exc)}); start it with `echelon stack up` "
            "or set ECHELON_API_BASE_URL (or pass --api)"
        )
    return EchelonError(f"request to the API at {base} failed ({_reason(exc)})")


def progress_bar(view: dict[str, Any], width: int = 30) -> str:
    total, done = view.get("total"), view.get("progress", 0)
    filled = int(width * done / total) if total else 0
    count = f"{done}/{total}" if total is not None else f"{done}/?"
    return f"[{'#' * filled}{'.' * (width - filled)}] {count:>9} {view['status']}"


def figure(cert: dict[str, Any], key: str, value: float | None = None) -> str:
    """A figure with its 95% interval and n when the certificate carries them: `0.512 [0.470, 0.555] n=100`."""
    shown = f"{cert[key] if value is None else value:.6f}"
    bounds = (cert.get("uncertainty") or {}).get(key)
    return f"{shown} [{bounds['low']:.6f}, {bounds['high']:.6f}] n={bounds['n']}" if bounds else shown


def certificate_table(cert: dict[str, Any]) -> str:
    rows = [
        ("certificate", cert["id"]),
        ("construct", cert["construct_id"]),
        ("composite", figure(cert, "composite_score")),
        ("brier", f"{cert['brier']:.6f}"),
        ("precision", figure(cert, "precision")),
        ("recall", figure(cert, "recall")),
        ("reply accuracy", figure(cert, "reply_accuracy")),
    ]
    calibration = cert.get("calibration")
    if calibration:
        rows.append(("calibration brier", figure(cert, "brier_score", calibration["brier_score"])))
        rows.append(
            ("calibration ECE", figure(cert, "expected_calibration_error", calibration["expected_calibration_error"]))
        )
    rows += [
        ("replays", f"{cert['replay_count']} scored, {len(cert.get('failed_replays', []))} failed"),
        ("scoring model", cert["scoring_model"]),
        ("ground truth", f"{cert['ground_truth_source']} {cert['commit_range']}"),
        ("content hash", cert["content_hash"]),
    ]
    uncertainty = cert.get("uncertainty")
    if uncertainty:
        rows.append(("intervals", f"95% bootstrap over replays, {uncertainty['resamples']} resamples"))
        if uncertainty.get("replays_to_narrow"):
            rows.append(
                ("to narrow", f"about {uncertainty['replays_to_narrow']} more replays for a composite within ±0.1")
            )
    spread = cert.get("repeat_spread")
    if spread:
        for name, s in spread["metrics"].items():
            rows.append(
                (
                    f"{name} ×{spread['repeats']}",
                    f"mean {s['mean']:.6f}  sd {s['stdev']:.6f}  min {s['min']:.6f}  max {s['max']:.6f}",
                )
            )
    if cert.get("rescored_from"):
        rows.append(("rescored from", cert["rescored_from"]))
    if cert.get("warning"):
        rows.append(("warning", cert["warning"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


async def submit_and_watch(args: argparse.Namespace, settings: Settings) -> int:
    if args.dry_run:  # no API at all: the CLI reads the ground truth itself
        from echelon.dryrun import plan, render

        found = await plan(args, settings)
        print(json.dumps(found.as_json()) if args.json else render(found))
        return 0
    # httpx logs every request at INFO; they would land between the progress bar and the certificate.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    base = api_base(args.api, settings)
    try:
        return await _submit_and_watch(args, settings, base)
    except httpx.HTTPError as exc:
        raise unreachable(base, exc) from exc


def api_base(explicit: str | None, settings: Settings) -> str:
    """--api, else ECHELON_API_BASE_URL, else the URL a live local stack recorded under the data directory,
    else (unless ECHELON_API_HOST or ECHELON_API_PORT says where) this user's newest live stack, else
    http://ECHELON_API_HOST:ECHELON_API_PORT."""
    if explicit:
        return explicit.rstrip("/")
    if settings.api_base_url:
        return settings.api_url()
    recorded = read_endpoint(settings.data_dir)
    if recorded is None and not {"api_host", "api_port"} & settings.model_fields_set:
        recorded = newest_stack()
    return recorded or settings.api_url()


def run_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "repo_url": repo_ref(args.repo),
        "construct_id": args.construct_id,
        "limit": args.limit,
        "min_replays": args.min_replays,
    }
    if getattr(args, "repeats", 1) != 1:
        body["repeats"] = args.repeats
    if args.oracle_url:
        body.update(oracle_type="http", oracle_url=args.oracle_url)
    else:
        module, _, func = args.oracle_callable.partition(":")
        if not func:
            raise EchelonError("--oracle-callable must look like module:function")
        body.update(oracle_type="python", oracle_module=module, oracle_callable=func)
    if args.github_token:
        body["github_token"] = args.github_token
    return body


async def _submit_and_watch(args: argparse.Namespace, settings: Settings, base: str) -> int:
    token = args.token or (settings.api_token.get_secret_value() if settings.api_token else None)
    token = token or mint_hs256("local", settings.jwt_secret.get_secret_value())
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        replay_within: float | None = None
        if args.resume:
            run_id = args.resume
            # An unknown run is a 404 here, not a stream that waits forever for its events.
            response = await client.get(f"/api/v1/verification/runs/{run_id}")
            _raise_for(response)
            if response.json().get("status") in TERMINAL:
                # The stream replays an ended run's stages from its first event; should they have aged out
                # of the stream, the outcome is shown without them rather than waiting forever.
                replay_within = ENDED_REPLAY_S
        else:
            if getattr(args, "baseline", None):  # a baseline that does not exist fails before any run is paid for
                _raise_for(await client.get(f"/api/v1/verification/certificates/{args.baseline}"))
            response = await client.post("/api/v1/verification/runs", json=run_body(args))
            _raise_for(response)
            run_id = response.json()["run_id"]
            _say(args.json, {"type": "submitted", "run_id": run_id}, f"run {run_id} submitted")
            if not args.watch and not _gates_asked(args):  # a gate needs the certificate: it watches
                return 0
        view = await _watch(client, base, token, run_id, as_json=args.json, stream_timeout=replay_within)
        if view["status"] == "FAILED":
            if args.json:
                print(json.dumps({"type": "result", "run": view, "certificate": None, "error": view["error"]}))
            print(f"run failed: {view['error']}", file=sys.stderr)
            return 1
        response = await client.get(f"/api/v1/verification/certificates/{view['certificate_id']}")
        _raise_for(response)
        cert = response.json()
        if args.json:
            print(json.dumps({"type": "result", "run": view, "certificate": cert, "error": None}))
        else:
            print(certificate_table(cert))
        return await _gate(client, args, cert)


def _gates_asked(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "fail_under", None) or getattr(args, "baseline", None))


async def _gate(client: httpx.AsyncClient, args: argparse.Namespace, cert: dict[str, Any]) -> int:
    """0 when every gate asked for passes (or none was), else GATE_FAILED with one line per failed figure."""
    if not _gates_asked(args):
        return 0
    checks = check_fail_under(cert, args.fail_under or {})
    if args.baseline:
        response = await client.get(
            "/api/v1/verification/certificates/compare", params={"a": args.baseline, "b": cert["id"]}
        )
        _raise_for(response)
        checks += check_max_drop(response.json(), args.max_drop or {"composite_score": 0.0})
    if args.json:
        print(json.dumps(gates_json(checks)))
    for check in checks:
        if not check.passed:
            print(check.line, file=sys.stderr)
        elif not args.json:
            print(check.line)
    return 0 if all(c.passed for c in checks) else GATE_FAILED


def _say(as_json: bool, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj) if as_json else text, flush=True)


def stage_json(run_id: str, progress: Progress, line: str) -> str:
    """One stage event of `--json` output."""
    return json.dumps(
        {
            "type": "stage",
            "run_id": run_id,
            "stage": progress.stage,
            "message": line,
            "total": progress.total,
            "done": len(progress.done),
            "failed": progress.failed,
        }
    )


async def _watch(
    client: httpx.AsyncClient,
    base: str,
    token: str,
    run_id: str,
    *,
    as_json: bool = False,
    stream_timeout: float | None = None,
) -> dict[str, Any]:
    """Show the run's stages live (WebSocket; polling if the stream is unavailable); return its final view.

    A terminal gets each new stage on its own line above one bar redrawn in place; a pipe or a file gets
    the stage lines and the final bar, no control characters; `as_json` one JSON object per stage, no bar."""
    tty = sys.stdout.isatty() and not as_json
    clear = "\r\x1b[K" if tty else ""  # back to the start of the bar's line and erase it

    def show(progress: Progress, line: str | None) -> None:
        if as_json:
            if line:
                print(stage_json(run_id, progress, line), flush=True)
        elif tty:
            prefix = f"{clear}{line}\n" if line else "\r"
            print(f"{prefix}{progress.bar()}", end="", flush=True)
        elif line:
            print(line, flush=True)

    ended_on_stream = False
    try:
        async with asyncio.timeout(stream_timeout):
            ended_on_stream = (await follow(base, token, run_id, show)).ended is not None
    except StreamUnavailable as exc:
        print(f"{clear}echelon: {exc}; polling {base} instead", file=sys.stderr)
    except TimeoutError:
        print(f"{clear}echelon: the stream did not replay the ended run's stages; its outcome:", file=sys.stderr)
    # The stream reads JetStream directly, ahead of the read model the run view comes from: poll until it
    # has caught up (at once, unless the stream was unavailable).
    view: dict[str, Any] = {}
    while True:
        response = await client.get(f"/api/v1/verification/runs/{run_id}")
        _raise_for(response)
        view = response.json()
        if view.get("status") in TERMINAL:
            break
        if tty and not ended_on_stream:  # the stream already showed the end: an older view would step back
            print(f"{clear}{progress_bar(view)}", end="", flush=True)
        await asyncio.sleep(0.2)  # the read model lags the stream by a writer batch
    if not as_json:
        print(f"{clear}{progress_bar(view)}")
    return view
