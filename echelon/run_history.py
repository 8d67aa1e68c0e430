"""`echelon runs history ID`: a run's logged events from the API, one line each (or JSON lines)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from api.tokens import issue_jwt
from echelon.client import _raise_for, api_base, unreachable
from echelon_platform.config import Settings

PAGE = 500  # the API's largest page


def runs_token(args: argparse.Namespace, settings: Settings) -> str:
    if args.token:
        return str(args.token)
    if settings.api_token is not None:
        return settings.api_token.get_secret_value()
    # Whoever can mint a token from the secret can read every run anyway; an admin token lets the local
    # developer read any run on the dev stack, including those submitted from the dashboard.
    return issue_jwt("local", settings.jwt_secret.get_secret_value(), admin=True)


async def events(client: httpx.AsyncClient, run_id: str) -> AsyncIterator[dict[str, Any]]:
    """Every logged event of the run, page by page."""
    after: int | None = 0
    while after is not None:
        response = await client.get(
            f"/api/v1/verification/runs/{run_id}/events", params={"after": after, "limit": PAGE}
        )
        _raise_for(response)
        body = response.json()
        for item in body["events"]:
            yield item
        after = body["next_after"]


def line(item: dict[str, Any], seq_of: dict[str, int]) -> str:
    """`seq  time  topic  causation`: the cause as `<- #seq` when it is this run's event, else its id."""
    event = item["event"]
    cause = event.get("causationId")
    if cause is None:
        causation = "-"
    elif cause in seq_of:
        causation = f"<- #{seq_of[cause]}"
    else:
        causation = f"<- {cause}"
    return f"{item['seq']:>8}  {event['timestamp']:<32}  {event['topic']:<28}  {causation}"


async def show_history(args: argparse.Namespace, settings: Settings) -> int:
    for name in ("httpx", "httpcore"):  # request logs would interleave with the output
        logging.getLogger(name).setLevel(logging.WARNING)
    base = api_base(args.api, settings).rstrip("/")
    headers = {"Authorization": f"Bearer {runs_token(args, settings)}"}
    seq_of: dict[str, int] = {}
    count = 0
    try:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            async for item in events(client, args.run_id):
                count += 1
                if args.json:
                    print(orjson.dumps(item).decode())
                    continue
                seq_of[item["event"]["eventId"]] = item["seq"]
                print(line(item, seq_of))
    except httpx.HTTPError as exc:
        raise unreachable(base, exc) from exc
    if not args.json:
        print(f"{count} event(s)")
    return 0
