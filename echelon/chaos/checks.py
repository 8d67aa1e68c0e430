"""The invariants checked after the load stopped and every run drained: each returns its findings, and every
entry under `violations` is a broken promise of the product."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson

from echelon.chaos.cluster import Cluster
from echelon.chaos.load import Request
from echelon_platform.domain.events import (
    CertificateIssued,
    ReplayFailed,
    ReplayInvoked,
    ReplayRequested,
    ReplayScored,
    RunCertifying,
    RunCompleted,
    RunFailed,
    RunIngested,
    RunIngesting,
    RunRequested,
)

API = "/api/v1/verification"
# What a certificate states that must not depend on faults (the sample oracle and offline scorer are
# deterministic); ids, timestamps and the content hash (which covers the construct id) differ per run.
FIGURES = ("precision", "recall", "reply_accuracy", "composite_score", "brier", "replay_count", "sample_size")
# Topics keyed by the run, and by the replay: a logical event appears at most once per key.
RUN_TOPICS = (
    RunRequested.TOPIC,
    RunIngesting.TOPIC,
    RunIngested.TOPIC,
    RunCertifying.TOPIC,
    CertificateIssued.TOPIC,
    RunCompleted.TOPIC,
    RunFailed.TOPIC,
)
REPLAY_TOPICS = (ReplayRequested.TOPIC, ReplayInvoked.TOPIC, ReplayScored.TOPIC, ReplayFailed.TOPIC)
MAX_LISTED = 20  # examples listed per violation


@dataclass
class LoggedRun:
    run_id: str
    construct_id: str
    ended_by: str | None = None  # by log position: the lifecycle's rule
    certificates: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (stage, reason)


@dataclass
class Findings:
    violations: dict[str, list[Any]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def violate(self, check: str, example: Any) -> None:
        self.violations.setdefault(check, []).append(example)

    def as_dict(self) -> dict[str, Any]:
        return {
            "violations": {k: {"count": len(v), "examples": v[:MAX_LISTED]} for k, v in self.violations.items()},
            **self.facts,
        }


async def logged_runs(conn: asyncpg.Connection) -> dict[str, LoggedRun]:
    runs: dict[str, LoggedRun] = {}
    for row in await conn.fetch(
        "SELECT payload->>'run_id' AS run_id, payload->>'construct_id' AS construct_id FROM events WHERE topic = $1",
        RunRequested.TOPIC,
    ):
        runs[row["run_id"]] = LoggedRun(row["run_id"], row["construct_id"])
    rows = await conn.fetch(
        "SELECT payload->>'run_id' AS run_id, topic, payload FROM events WHERE topic = ANY($1::text[]) ORDER BY seq",
        [CertificateIssued.TOPIC, RunFailed.TOPIC],
    )
    for row in rows:
        run = runs.setdefault(row["run_id"], LoggedRun(row["run_id"], "?"))
        if run.ended_by is None:
            run.ended_by = row["topic"]
        payload = row["payload"]
        payload = payload if isinstance(payload, dict) else orjson.loads(payload)
        if row["topic"] == CertificateIssued.TOPIC:
            run.certificates.append(str(payload["certificate"]["certificate_id"]))
        else:
            run.failures.append((str(payload.get("stage")), str(payload.get("reason"))))
    return runs


async def wait_terminal_in_log(database_url: str, run_ids: set[str], deadline_s: float) -> tuple[float, set[str]]:
    """Seconds until every run ended in the log (or the deadline), and the runs still open then."""
    started = time.monotonic()
    open_runs = set(run_ids)
    while True:
        try:
            conn = await asyncpg.connect(database_url)
            try:
                runs = await logged_runs(conn)
            finally:
                await conn.close()
            open_runs = {r for r in run_ids if r not in runs or runs[r].ended_by is None}
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass
        if not open_runs or time.monotonic() - started > deadline_s:
            return time.monotonic() - started, open_runs
        await asyncio.sleep(0.5)


async def _get(http: httpx.AsyncClient, path: str, deadline_s: float = 30.0) -> httpx.Response:
    """A GET that rides out a restarting API (a check must not fail on a connection refused)."""
    started = time.monotonic()
    while True:
        try:
            response = await http.get(path)
            if response.status_code < 500:
                return response
        except httpx.HTTPError:
            if time.monotonic() - started > deadline_s:
                raise
        if time.monotonic() - started > deadline_s:
            return response
        await asyncio.sleep(0.2)


def check_requests(findings: Findings, requests: list[Request], runs: dict[str, LoggedRun]) -> None:
    """Every accepted request ↔ exactly one logged request event; no run from a request answered with an error."""
    by_construct: dict[str, list[LoggedRun]] = {}
    for run in runs.values():
        by_construct.setdefault(run.construct_id, []).append(run)
    for request in requests:
        found = by_construct.get(request.construct_id, [])
        logged = [r.run_id for r in found]
        if request.run_id is not None:
            if logged != [request.run_id]:
                findings.violate(
                    "accepted_run_not_logged_once",
                    {
                        "construct_id": request.construct_id,
                        "run_id": request.run_id,
                        "logged": [r.run_id for r in found],
                    },
                )
        elif found and not request.ambiguous:
            findings.violate(
                "run_started_by_an_error_answer",
                {
                    "construct_id": request.construct_id,
                    "attempts": request.attempts,
                    "logged": [r.run_id for r in found],
                },
            )
        elif len(found) > 1:
            findings.violate("one_request_many_runs", {"construct_id": request.construct_id, "logged": len(found)})
    known = {r.construct_id for r in requests} | {"chaos-reference"}
    strangers = [r.run_id for r in runs.values() if r.construct_id not in known]
    if strangers:
        findings.violate("runs_from_no_request", strangers)
    findings.facts["runs_in_log"] = len(runs)
    findings.facts["runs_from_lost_answers"] = sum(
        1 for r in requests if r.run_id is None and r.ambiguous and by_construct.get(r.construct_id)
    )


async def check_duplicates(findings: Findings, conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT topic, payload->>'run_id' AS k, count(*) AS n FROM events WHERE topic = ANY($1::text[]) "
        "GROUP BY 1, 2 HAVING count(*) > 1",
        list(RUN_TOPICS),
    )
    rows += await conn.fetch(
        "SELECT topic, payload->>'replay_id' AS k, count(*) AS n FROM events WHERE topic = ANY($1::text[]) "
        "GROUP BY 1, 2 HAVING count(*) > 1",
        list(REPLAY_TOPICS),
    )
    for row in rows:
        findings.violate("duplicate_logical_events", {"topic": row["topic"], "key": row["k"], "count": row["n"]})
    # A replay ends once: scored or failed, never both.
    for row in await conn.fetch(
        "SELECT payload->>'replay_id' AS k FROM events WHERE topic = ANY($1::text[]) "
        "GROUP BY 1 HAVING count(DISTINCT topic) > 1",
        [ReplayScored.TOPIC, ReplayFailed.TOPIC],
    ):
        findings.violate("replay_scored_and_failed", row["k"])
    findings.facts["events_in_log"] = await conn.fetchval("SELECT count(*) FROM events")


async def check_parked(findings: Findings, conn: asyncpg.Connection) -> None:
    findings.facts["parked_events"] = await conn.fetchval("SELECT count(*) FROM parked_events")
    for row in await conn.fetch("SELECT id, subject FROM parked_events WHERE coalesce(btrim(reason), '') = ''"):
        findings.violate("parked_without_reason", {"id": row["id"], "subject": row["subject"]})


async def check_runs(
    findings: Findings, http: httpx.AsyncClient, runs: dict[str, LoggedRun], reference: dict[str, Any]
) -> None:
    """Read models through the API agree with the log: terminal, one public certificate per COMPLETED run with
    the reference numbers, none for FAILED; and no run failed (the sample oracle never fails)."""
    statuses: dict[str, int] = {}
    watchdog: list[dict[str, Any]] = []
    for run in runs.values():
        if run.ended_by is None:
            findings.violate("run_not_terminal_in_log", run.run_id)
        for stage, reason in run.failures:
            if run.ended_by == RunFailed.TOPIC and stage == "watchdog":
                watchdog.append({"run_id": run.run_id, "reason": reason})
        view = await _get(http, f"{API}/runs/{run.run_id}")
        if view.status_code != 200:
            findings.violate("run_not_readable", {"run_id": run.run_id, "status": view.status_code})
            continue
        data = view.json()
        status = data["status"]
        statuses[status] = statuses.get(status, 0) + 1
        expected = {CertificateIssued.TOPIC: "COMPLETED", RunFailed.TOPIC: "FAILED"}.get(
            run.ended_by or "", "a terminal status"
        )
        if status != expected:
            findings.violate("read_model_disagrees_with_log", {"run_id": run.run_id, "api": status, "log": expected})
        if status == "FAILED" and not any(s == "watchdog" for s, _ in run.failures):
            findings.violate("innocent_run_failed", {"run_id": run.run_id, "error": data.get("error")})
        await _check_certificates(findings, http, run, data, reference)
    if watchdog:
        findings.violate("failed_by_watchdog", watchdog)
    findings.facts["run_statuses"] = dict(sorted(statuses.items()))
    findings.facts["failed_by_watchdog"] = len(watchdog)


async def _check_certificates(
    findings: Findings, http: httpx.AsyncClient, run: LoggedRun, view: dict[str, Any], reference: dict[str, Any]
) -> None:
    if run.ended_by == CertificateIssued.TOPIC:
        if len(run.certificates) != 1 or view.get("certificate_id") != run.certificates[0]:
            findings.violate(
                "completed_without_exactly_one_certificate",
                {"run_id": run.run_id, "logged": run.certificates, "api": view.get("certificate_id")},
            )
            return
        cert = await _get(http, f"{API}/certificates/{run.certificates[0]}")
        if cert.status_code != 200:
            findings.violate("certificate_not_public", {"run_id": run.run_id, "status": cert.status_code})
            return
        figures = {k: cert.json().get(k) for k in FIGURES}
        if figures != reference:
            findings.violate("certificate_differs_from_clean_run", {"run_id": run.run_id, "figures": figures})
        return
    if view.get("certificate_id") is not None:
        findings.violate("failed_run_shows_certificate", {"run_id": run.run_id, "api": view.get("certificate_id")})
    for cert_id in run.certificates:
        if (await _get(http, f"{API}/certificates/{cert_id}")).status_code != 404:
            findings.violate("failed_run_has_public_certificate", {"run_id": run.run_id, "certificate_id": cert_id})


async def check_replay(findings: Findings, world: Cluster) -> None:
    """`echelon rebuild --verify`: a rebuild from the log equals the live read models."""
    from coordinator.rebuild import verify
    from echelon_platform.adapters.readmodel_writer import Projector
    from echelon_platform.adapters.services import Services

    async with (
        Services(world.settings, name="echelon-chaos-verify") as services,
        Projector(
            str(world.settings.redis_url), world.settings.redis_prefix, partitioning=world.settings.partitioning
        ) as projector,
    ):
        report = await verify(services.store, projector, services.settings)
    findings.facts["replay_verify"] = {
        "events": report.events,
        "runs": report.runs,
        "certificates": report.certificates,
        "differences": len(report.differences),
    }
    for line in report.differences:
        findings.violate("replay_differs_from_live", line)


async def check_all(
    world: Cluster, http: httpx.AsyncClient, requests: list[Request], reference: dict[str, Any]
) -> Findings:
    findings = Findings()
    conn = await asyncpg.connect(world.database_url)
    try:
        runs = await logged_runs(conn)
        await check_duplicates(findings, conn)
        await check_parked(findings, conn)
    finally:
        await conn.close()
    check_requests(findings, requests, runs)
    await check_runs(findings, http, runs, reference)
    await check_replay(findings, world)
    return findings
