"""The stage table against the topic registry, the role table, the handlers and docs/stages.md."""

from __future__ import annotations

import runpy
from pathlib import Path

from echelon_platform.domain.bus_access import ROLE_STAGES, STAGE_TOPICS, BusLayout
from echelon_platform.domain.events import TOPICS
from echelon_platform.domain.roles import PUBLISHES, STAGE_ROLES, Role
from echelon_platform.domain.stages import PRODUCERS, STAGE_NAMES, STAGES, consumer_of
from pipeline_workers.handlers.certify import CertifyHandler
from pipeline_workers.handlers.ingest import IngestHandler
from pipeline_workers.handlers.invoke import InvokeHandler
from pipeline_workers.handlers.score import ScoreHandler
from pipeline_workers.pipeline import STAGES as PIPELINE_STAGES

ROOT = Path(__file__).resolve().parents[2]


def test_docs_stages_md_is_current() -> None:
    render = runpy.run_path(str(ROOT / "scripts" / "gen_stages_doc.py"))["render"]
    assert (ROOT / "docs" / "stages.md").read_text() == render(), "run: python scripts/gen_stages_doc.py"


def test_every_topic_has_a_publisher_and_every_consumed_topic_is_published_upstream() -> None:
    emitted = {m.TOPIC for row in (*STAGES, *PRODUCERS) for m in row.emits}
    assert emitted == set(TOPICS)
    upstream = {m.TOPIC for p in PRODUCERS for m in p.emits}
    for stage in STAGES:
        assert stage.consumes.TOPIC in upstream, f"{stage.name} consumes a topic nothing before it emits"
        assert stage.consumes not in stage.emits, stage.name
        upstream |= {m.TOPIC for m in stage.emits}
    consumed = [s.consumes.TOPIC for s in STAGES]
    assert len(consumed) == len(set(consumed)), "two stages share a durable consumer's topic"
    assert consumer_of("verify.replay.invoked") is not None and consumer_of("verify.replay.invoked").name == "score"
    assert consumer_of("verify.run.completed") is None


def test_each_stage_user_may_publish_what_the_stage_emits_and_fetches_only_its_own_consumer() -> None:
    for stage in STAGES:
        role = STAGE_ROLES[stage.name]
        assert {m.TOPIC for m in stage.emits} <= PUBLISHES[role], stage.name
        assert ROLE_STAGES[role] == (stage.name,)
        assert BusLayout().consumes(role) == [f"echelon-{stage.name}"]
    shared = {s.name for s in STAGES if not s.alone}
    assert set(ROLE_STAGES[Role.STAGES]) == shared == {"ingest", "invoke", "score"}
    assert not PUBLISHES[Role.STAGES] & {"verify.certificate.issued", "verify.run.completed"}
    for producer in PRODUCERS:
        if producer.role is not None:
            assert {m.TOPIC for m in producer.emits} == PUBLISHES[Role(producer.role)], producer.name


def test_the_handlers_and_the_pipeline_follow_the_table() -> None:
    handlers = {h.__name__: h for h in (IngestHandler, InvokeHandler, ScoreHandler, CertifyHandler)}
    for stage in STAGES:
        handler = handlers[stage.handler]
        assert (handler.stage, handler.topic) == (stage.name, stage.consumes.TOPIC)
    assert {s.name: s.consumes.TOPIC for s in STAGES} == STAGE_TOPICS
    assert PIPELINE_STAGES == STAGE_NAMES == ("ingest", "invoke", "score", "certify")
