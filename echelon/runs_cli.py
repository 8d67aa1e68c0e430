"""`echelon runs list` and `echelon runs get ID`: runs through the API, as a person reads them (or JSON)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import httpx
import orjson

from echelon.client import _raise_for, api_base, progress_bar, unreachable
from echelon.run_history import runs_token
from echelon_platform.config import Settings

RUNS = "/api/v1/verification/runs"


async def _get(args: argparse.Namespace, settings: Settings, path: str, params: dict[str, Any]) -> Any:
    for name in ("httpx", "httpcore"):  # request logs would interleave with the output
        logging.getLogger(name).setLevel(logging.WARNING)
    base = api_base(args.api, settings).rstrip("/")
    headers = {"Authorization": f"Bearer {runs_token(args, settings)}"}
    try:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            response = await client.get(path, params={k: v for k, v in params.items() if v is not None})
    except httpx.HTTPError as exc:
        raise unreachable(base, exc) from exc
    _raise_for(response)
    return response.json()


def run_line(view: dict[str, Any]) -> str:
    total = view.get("total")
    count = f"{view.get('progress', 0)}/{total if total is not None else '?'}"
    created = (view.get("created_at") or "")[:19].replace("T", " ")
    return f"{view['run_id']:<26}  {view['status']:<10}  {count:>9}  {created:<19}  {view.get('construct_id') or '-'}"


async def list_runs(args: argparse.Namespace, settings: Settings) -> int:
    params = {"status": args.status, "construct_id": args.construct_id, "limit": args.limit, "offset": args.offset}
    page = await _get(args, settings, RUNS, params)
    if args.json:
        print(orjson.dumps(page).decode())
        return 0
    print(f"{'RUN':<26}  {'STATUS':<10}  {'PROGRESS':>9}  {'CREATED (UTC)':<19}  CONSTRUCT")
    for view in page["runs"]:
        print(run_line(view))
    shown = len(page["runs"])
    more = f"; next page: --offset {args.offset + shown}" if args.offset + shown < page["total"] else ""
    print(f"{shown} of {page['total']} run(s){more}")
    return 0


async def get_run(args: argparse.Namespace, settings: Settings) -> int:
    view = await _get(args, settings, f"{RUNS}/{args.run_id}", {})
    if args.json:
        print(orjson.dumps(view).decode())
        return 0
    for key in ("run_id", "status", "construct_id", "repo_url", "certificate_id", "error", "created_at", "updated_at"):
        if view.get(key) is not None:
            print(f"{key + ':':<16}{view[key]}")
    print(f"{'progress:':<16}{progress_bar(view)}")
    return 0
