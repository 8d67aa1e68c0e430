"""`GET /runs/{id}/events` and `echelon runs history`: a run's logged events in log order, paged, private."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from tests.cli import cli_env, run_cli
from tests.factories import run_events
from tests.integration.test_api_support import API, app, auth, client, drain, options, publish, serve, token

__all__ = ["app", "client", "options"]  # fixtures


async def _logged_run(services: Services, settings: Settings, run_id: str) -> list[str]:
    """A run's events as published, logged by the coordinator (which adds `verify.run.certifying` after them)."""
    first, *rest = run_events(run_id, n=3, failed=1)
    # Caused by the request, as the stages' events are: the CLI shows the cause by its log position.
    events = [first, *(e.model_copy(update={"causation_id": first.event_id}) for e in rest)]
    await publish(services, events)
    await drain(services, settings)
    return [e.event_id for e in events]


def _ids(items: list[dict[str, Any]], published: list[str]) -> list[str]:
    """The published events' ids as listed; the coordinator's own announcement comes last."""
    assert [i["event"]["topic"] for i in items if i["event"]["eventId"] not in published] == ["verify.run.certifying"]
    assert items[-1]["event"]["topic"] == "verify.run.certifying"
    return [i["event"]["eventId"] for i in items if i["event"]["eventId"] in published]


async def test_owner_reads_the_history_in_log_order_page_by_page(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    published = await _logged_run(services, settings, "HIST1")
    alice = auth(settings, "alice")
    whole = await client.get(f"{API}/runs/HIST1/events", headers=alice)
    assert whole.status_code == 200, whole.text
    body = whole.json()
    assert body["next_after"] is None
    assert _ids(body["events"], published) == published
    seqs = [item["seq"] for item in body["events"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    first = body["events"][0]["event"]
    assert first["topic"] == "verify.run.requested" and first["correlationId"] == "run-HIST1"
    replay = next(i["event"] for i in body["events"] if i["event"]["topic"] == "verify.replay.requested")
    assert replay["payload"]["record"]["diff_content"].startswith("diff --git")  # records are part of it

    pages: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        page = (await client.get(f"{API}/runs/HIST1/events", params={"after": after, "limit": 2}, headers=alice)).json()
        assert len(page["events"]) <= 2
        pages += page["events"]
        after = page["next_after"]
        if after is not None:
            assert after == page["events"][-1]["seq"]
    assert pages == body["events"]
    tail = await client.get(f"{API}/runs/HIST1/events", params={"after": seqs[-1]}, headers=alice)
    assert tail.json() == {"run_id": "HIST1", "events": [], "next_after": None}
    too_big = await client.get(f"{API}/runs/HIST1/events", params={"limit": 501}, headers=alice)
    assert too_big.status_code == 422


async def test_history_is_private_admins_see_it(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    published = await _logged_run(services, settings, "HIST2")
    not_yours = await client.get(f"{API}/runs/HIST2/events", headers=auth(settings, "bob"))
    assert not_yours.status_code == 404 and not_yours.json() == {"detail": "run HIST2 not found"}
    assert (await client.get(f"{API}/runs/NOSUCH/events", headers=auth(settings, "alice"))).status_code == 404
    assert (await client.get(f"{API}/runs/HIST2/events")).status_code == 401
    admin = await client.get(f"{API}/runs/HIST2/events", headers=auth(settings, "root", admin=True))
    assert admin.status_code == 200
    assert _ids(admin.json()["events"], published) == published


async def test_secrets_of_a_request_never_reach_the_history(
    client: httpx.AsyncClient, services: Services, settings: Settings
) -> None:
    body = {
        "repo_url": "https://github.com/acme/widgets",
        "construct_id": "oracle-a",
        "oracle_type": "http",
        "oracle_url": "http://127.0.0.1:9/oracle",
        "oracle_headers": {"X-Api-Key": "sk-oracle-do-not-leak"},
        "github_token": "ghp_do_not_leak_0123456789",
    }
    alice = auth(settings, "alice")
    created = await client.post(f"{API}/runs", json=body, headers=alice)
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]
    await drain(services, settings)
    history = await client.get(f"{API}/runs/{run_id}/events", headers=alice)
    assert [i["event"]["topic"] for i in history.json()["events"]][:1] == ["verify.run.requested"]
    assert "X-Api-Key" in history.text  # header names are kept, their values never
    assert "do-not-leak" not in history.text and "do_not_leak" not in history.text


async def test_cli_prints_one_line_per_event_with_causation(
    app: FastAPI, services: Services, settings: Settings, tmp_path: Path
) -> None:
    published = await _logged_run(services, settings, "HIST3")
    async with serve(app) as address:
        env = cli_env(ECHELON_API_BASE_URL=f"http://{address}")
        table = await run_cli("runs", "history", "HIST3", "--token", token(settings, "alice"), cwd=tmp_path, env=env)
        as_json = await run_cli(
            "runs", "history", "HIST3", "--json", "--token", token(settings, "alice"), cwd=tmp_path, env=env
        )
        refused = await run_cli("runs", "history", "HIST3", "--token", token(settings, "bob"), cwd=tmp_path, env=env)
    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[-1] == f"{len(published) + 1} event(s)"
    assert [line.split()[2] for line in lines[:-1]][:2] == ["verify.run.requested", "verify.run.ingesting"]
    assert lines[0].split()[3] == "-"
    assert lines[1].split()[3:] == ["<-", f"#{lines[0].split()[0]}"]
    assert as_json.code == 0 and len(as_json.stdout.splitlines()) == len(published) + 1
    assert refused.code == 1 and "404" in refused.stderr and "not found" in refused.stderr


async def test_cli_lists_runs_and_gets_one(
    app: FastAPI, services: Services, settings: Settings, tmp_path: Path
) -> None:
    await _logged_run(services, settings, "LIST1")
    await _logged_run(services, settings, "LIST2")
    await drain(services, settings)
    alice = token(settings, "alice")
    async with serve(app) as address:
        env = cli_env(ECHELON_API_BASE_URL=f"http://{address}")
        table = await run_cli("runs", "list", "--token", alice, cwd=tmp_path, env=env)
        page = await run_cli("runs", "list", "--limit", "1", "--json", "--token", alice, cwd=tmp_path, env=env)
        one = await run_cli("runs", "get", "LIST1", "--token", alice, cwd=tmp_path, env=env)
        missing = await run_cli("runs", "get", "NOPE", "--token", alice, cwd=tmp_path, env=env)
    assert table.code == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].split()[:3] == ["RUN", "STATUS", "PROGRESS"] and rows[-1] == "2 of 2 run(s)"
    assert {r.split()[0] for r in rows[1:-1]} == {"LIST1", "LIST2"}
    listed = json.loads(page.stdout)
    assert page.code == 0 and listed["total"] == 2 and len(listed["runs"]) == 1
    assert one.code == 0 and "run_id:         LIST1" in one.stdout and "progress:" in one.stdout
    assert missing.code == 1 and "404" in missing.stderr and "Traceback" not in missing.stderr
