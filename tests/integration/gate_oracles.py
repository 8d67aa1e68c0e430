"""A worse construct than the sample oracle, for gate tests: the same reply with claims the diff does not
support, so precision (and the composite) drop on every change."""

from __future__ import annotations

from typing import Any

from pipeline_workers.oracles.sample import summarise

VAGUE = "tests.integration.gate_oracles:vague"


def vague(request: dict[str, Any]) -> dict[str, Any]:
    reply = summarise(request)
    reply["key_claims"] = [
        "Migrates the storage layer to a new database engine",
        "Removes the public HTTP API",
        *reply["key_claims"][:1],
    ]
    reply["follow_up_response"] = "It is a routine change."
    return reply
