"""Every event the API publishes goes through one helper: published, counted once, logged with its position
(on the access line of the request that published it)."""

from __future__ import annotations

import structlog
from fastapi import FastAPI

from echelon_platform.config import Settings
from tests.integration.test_api_support import app, auth, http_client, options

__all__ = ["app", "options"]  # fixtures

METHODOLOGY = {"version": "v9.1", "description": "rubric", "files": {"rubric.md": "Score what the change did.\n"}}


async def test_a_registration_sent_twice_before_it_is_logged_counts_as_one_published_event(
    app: FastAPI, settings: Settings
) -> None:
    admin = auth(settings, "root", admin=True)
    with structlog.testing.capture_logs() as logs:
        async with http_client(app) as client:
            # No writer runs: the log does not hold the first yet, so the second is published again and
            # JetStream drops it as a duplicate of the same dedup key (the version).
            for _ in range(2):
                response = await client.post("/api/v1/methodology", json=METHODOLOGY, headers=admin)
                assert response.status_code == 201, response.text
            metrics = (await client.get("/metrics")).text
    assert 'echelon_events_published_total{topic="verify.methodology.registered"} 1.0' in metrics
    # Each request's access line carries the event it published.
    published = [e for e in logs if e["event"] == "http.request" and "topic" in e]
    assert [(e["topic"], e["duplicate"]) for e in published] == [
        ("verify.methodology.registered", False),
        ("verify.methodology.registered", True),
    ]
    assert published[0]["seq"] == published[1]["seq"]
