"""Fixtures for pipeline tests: only the outside world (HTTP, DNS, clocks, sleep) is faked."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from echelon_platform.domain.values import GroundTruthRecord
from pipeline_workers.fixtures import materialise_sample_repo

from .helpers import SleepRecorder, make_record


@pytest.fixture
def record() -> GroundTruthRecord:
    return make_record()


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest_asyncio.fixture(scope="session")
async def sample_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return await materialise_sample_repo(tmp_path_factory.mktemp("sample") / "textkit")
