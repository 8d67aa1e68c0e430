"""Local repositories are read through the path that was checked, never through the requested one again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

import pipeline_workers.handlers.ingest as ingest_module
from echelon_platform.adapters.services import Services
from echelon_platform.config import Settings
from echelon_platform.domain.events import OracleSpec, ReplayRequested, RunFailed, RunRequested, make_event
from echelon_platform.domain.repo_refs import check_local_repo_allowed
from pipeline_workers.fixtures import materialise_sample_repo
from pipeline_workers.handlers.ingest import IngestHandler
from pipeline_workers.pipeline import stage_context
from tests.factories import T0

SECRET_TITLE = "Secret plans (#9)"


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Eve",
        "GIT_AUTHOR_EMAIL": "eve@example.com",
        "GIT_COMMITTER_NAME": "Eve",
        "GIT_COMMITTER_EMAIL": "eve@example.com",
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def secret_repo(path: Path) -> Path:
    """A repository outside the allowed roots whose one change must never be read."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "plans.txt").write_text("the secret\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", SECRET_TITLE)
    return path


def request_for(repo_url: str) -> RunRequested:
    return RunRequested(
        run_id="swap1",
        user_id="mallory",
        construct_id="oracle-m",
        repo_url=repo_url,
        oracle=OracleSpec(type="python", module="pipeline_workers.oracles.sample", callable="summarise"),
        limit=3,
        min_replays=1,
        weights={"precision": 1.0, "recall": 1.0, "reply_accuracy": 1.0},
        created_at=T0,
    )


async def test_a_symlink_swapped_after_the_check_is_not_followed(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "repos"
    good = await materialise_sample_repo(root / "good")
    outside = secret_repo(tmp_path / "outside" / "secret")
    link = root / "link"
    link.symlink_to(good)
    settings = settings.model_copy(update={"local_repo_roots": [root]})

    def check_then_swap(url: str, roots: list[Path]) -> Path | None:
        # The race, made deterministic: the link is re-pointed right after the check passed.
        result = check_local_repo_allowed(url, roots)
        link.unlink()
        link.symlink_to(outside)
        return result

    monkeypatch.setattr(ingest_module, "check_local_repo_allowed", check_then_swap)
    payload = request_for(str(link))
    async with Services(settings, name="test-swap") as services, httpx.AsyncClient() as http:
        events = await IngestHandler(stage_context(services, settings, http)).handle(make_event(payload), payload)

    assert not [e for e in events if e.topic == "verify.run.failed"], [
        RunFailed.model_validate(e.payload).reason for e in events if e.topic == "verify.run.failed"
    ]
    titles = [ReplayRequested.model_validate(e.payload).record.title for e in events if e.topic.endswith("requested")]
    assert titles and SECRET_TITLE not in titles
    assert all(str(good.resolve()) in ReplayRequested.model_validate(e.payload).record.url for e in events[:-1])
