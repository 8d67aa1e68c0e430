"""`echelon certificates rescore RUN --methodology vN [--judge J]`: score a completed run's logged oracle
replies again, through the API's admin route (a new run and certificate linked to the first; no oracle call)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import httpx

from echelon.client import _raise_for, _watch, api_base, certificate_table, unreachable
from echelon.run_history import runs_token
from echelon_platform.config import Settings

RUNS = "/api/v1/verification/runs"


async def rescore(args: argparse.Namespace, settings: Settings) -> int:
    for name in ("httpx", "httpcore"):  # request logs would interleave with the output
        logging.getLogger(name).setLevel(logging.WARNING)
    base = api_base(args.api, settings).rstrip("/")
    token = runs_token(args, settings)  # an admin dev token unless one is given: the route is admin-only
    run_id = args.run.removeprefix("cert-")
    body: dict[str, Any] = {"methodology_version": args.methodology}
    if args.judge:
        body["judge"] = args.judge
    try:
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            response = await c.post(f"{RUNS}/{run_id}/rescore", json=body)
            _raise_for(response)
            new_id = response.json()["run_id"]
            again = " (asked for before)" if response.status_code == 200 else ""
            if not args.json:
                print(f"rescore of run {run_id} under {args.methodology}: run {new_id}{again}", flush=True)
            if not args.watch:
                if args.json:
                    print(json.dumps({"type": "submitted", "run_id": new_id, "rescore_of": run_id}))
                return 0
            view = await _watch(c, base, token, new_id, as_json=args.json)
            if view["status"] == "FAILED":
                print(f"rescore failed: {view['error']}", file=sys.stderr)
                return 1
            response = await c.get(f"/api/v1/verification/certificates/{view['certificate_id']}")
            _raise_for(response)
    except httpx.HTTPError as exc:
        raise unreachable(base, exc) from exc
    cert = response.json()
    print(json.dumps({"type": "result", "run": view, "certificate": cert}) if args.json else certificate_table(cert))
    return 0
