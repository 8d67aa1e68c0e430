"""The role table (who may publish what) against the topic registry, and the configs rendered from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from echelon.embedded._nats import authorization_block
from echelon.setup import may_set_up
from echelon_platform.adapters.services import nats_credentials
from echelon_platform.config import Settings
from echelon_platform.domain.bus_access import BusLayout, allowed_publish, may_provision, stage_durable
from echelon_platform.domain.events import TOPICS
from echelon_platform.domain.roles import PUBLISHES, Role, publish_subjects, role_for_stages, stage_groups

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LAYOUT = BusLayout()
CERTIFIER_ONLY = {"verify.certificate.issued", "verify.run.completed"}


def test_every_role_has_a_row_of_known_topics_and_every_topic_a_publisher() -> None:
    assert set(PUBLISHES) == set(Role)
    for role, topics in PUBLISHES.items():
        assert topics <= set(TOPICS), role
    publishers = set().union(*(PUBLISHES[r] for r in Role if r is not Role.OPERATOR))
    assert publishers == set(TOPICS)


def test_only_the_certifier_publishes_certificates() -> None:
    holders = {role for role, topics in PUBLISHES.items() if topics & CERTIFIER_ONLY}
    assert holders == {Role.CERTIFY, Role.OPERATOR}
    assert "verify.certificate.issued" not in PUBLISHES[Role.API]


def test_every_worker_process_may_fail_a_run_for_its_watchdog() -> None:
    for stages in (["ingest"], ["invoke"], ["score"], ["certify"], ["ingest", "score"]):
        assert "verify.run.failed" in PUBLISHES[role_for_stages(stages)]


def test_certify_never_shares_a_connection_with_another_stage() -> None:
    assert stage_groups(["ingest", "invoke", "score", "certify"]) == [
        (Role.STAGES, ("ingest", "invoke", "score")),
        (Role.CERTIFY, ("certify",)),
    ]
    assert stage_groups(["invoke"]) == [(Role.INVOKE, ("invoke",))]
    with pytest.raises(ValueError):
        role_for_stages(["score", "certify"])


def test_subjects_follow_the_subject_root() -> None:
    assert "t1.certificate.issued.*" in publish_subjects(Role.CERTIFY, "t1")
    assert publish_subjects(Role.OPERATOR, "t1")[-1] == "t1.>"
    assert not [s for s in publish_subjects(Role.READER, "t1") if s.startswith("t1")]


def test_the_compose_authorization_is_rendered_from_the_table() -> None:
    rendered = authorization_block(BusLayout(), {r: f"$ECHELON_NATS_PASSWORD_{r.name}" for r in Role})
    deployed = (REPO / "deploy" / "nats-auth.conf").read_text()
    assert rendered in deployed, "regenerate deploy/nats-auth.conf from roles.py"
    assert "include ./nats-auth.conf" in (REPO / "deploy" / "nats-js.conf").read_text()
    compose = (REPO / "docker-compose.yml").read_text()
    for role in Role:
        assert f"ECHELON_NATS_PASSWORD_{role.name}" in compose


def test_credentials_per_role(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHELON_NATS_ROLE_PASSWORDS", '{"api": "a-pw", "certify": "c-pw"}')
    settings = Settings()
    assert nats_credentials(settings, Role.CERTIFY) == ("certify", "c-pw")
    assert nats_credentials(settings, None) == (None, None)
    file = tmp_path / "credentials.json"
    file.write_text('{"coordinator": "k-pw"}')
    single = Settings(nats_user="solo", nats_password="s-pw", nats_credentials_file=file)  # type: ignore[arg-type]
    assert nats_credentials(single, Role.COORDINATOR) == ("coordinator", "k-pw")
    assert nats_credentials(single, None) == ("solo", "s-pw")


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def _may(role: Role, subject: str, layout: BusLayout = DEFAULT_LAYOUT) -> bool:
    return any(_matches(p, subject) for p in allowed_publish(role, layout))


def test_only_setup_creates_and_nobody_destroys_the_stream() -> None:
    for role in Role:
        assert not _may(role, "$JS.API.STREAM.CREATE.EVIL"), role  # no second stream: no republish, no mirror
        assert not _may(role, "$JS.API.STREAM.PURGE.VERIFY"), role
        assert not _may(role, "$JS.API.STREAM.DELETE.VERIFY"), role
        assert not _may(role, "_INBOX.evil.RUN1"), role  # no forged replies into another client's inbox
        assert not _may(role, "$JS.API.CONSUMER.CREATE.VERIFY"), role  # an "ephemeral" naming any durable
        assert _may(role, "$JS.API.STREAM.INFO.VERIFY") and _may(role, "$JS.API.DIRECT.GET.VERIFY"), role
        assert _may(role, "$JS.API.STREAM.CREATE.VERIFY") == (role is Role.SETUP), role


def test_each_role_fetches_and_acks_only_its_own_consumers() -> None:
    layout = BusLayout(partitions=2)
    settings = Settings(partitions=2)
    own = {
        Role.COORDINATOR: {settings.writer_durable(0), settings.writer_durable(1)},
        Role.STAGES: {"echelon-ingest", "echelon-invoke", "echelon-score"},
        Role.CERTIFY: {"echelon-certify"},
        Role.INGEST: {"echelon-ingest"},
        Role.INVOKE: {"echelon-invoke"},
        Role.SCORE: {"echelon-score"},
    }
    for role in Role:
        for durable in layout.durables():
            mine = durable in own.get(role, set())
            assert _may(role, f"$JS.API.CONSUMER.MSG.NEXT.VERIFY.{durable}", layout) == mine, (role, durable)
            assert _may(role, f"$JS.ACK.VERIFY.{durable}.1.5.5.1700000000.0", layout) == mine, (role, durable)
            assert _may(role, f"$JS.API.CONSUMER.INFO.VERIFY.{durable}", layout), (role, durable)
            deletes = role is Role.SETUP or (role is Role.COORDINATOR and mine)
            assert _may(role, f"$JS.API.CONSUMER.DELETE.VERIFY.{durable}", layout) == deletes, (role, durable)
    assert set(layout.stage_durables()) == {
        stage_durable("echelon", s) for s in ("ingest", "invoke", "score", "certify")
    }


def test_who_provisions_the_stream_and_consumers(tmp_path: Path) -> None:
    assert may_provision(None) and may_provision("setup") and may_provision("an-operators-own-user")
    assert not [role for role in Role if role is not Role.SETUP and may_provision(role.value)]
    # stack up runs setup only with credentials that may: not as `echelon coordinator` logged in as coordinator.
    assert may_set_up(Settings(nats_role_passwords={"setup": "s", "api": "a"}))  # type: ignore[arg-type]
    assert not may_set_up(Settings(nats_role_passwords={"api": "a"}))  # type: ignore[arg-type]
    assert not may_set_up(Settings(nats_user="coordinator", nats_password="c"))  # type: ignore[arg-type]
    assert may_set_up(Settings())  # no authentication at all
    file = tmp_path / "credentials.json"
    file.write_text('{"api": "a"}')
    assert not may_set_up(Settings(nats_credentials_file=file))
