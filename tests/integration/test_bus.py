"""The stream is created or brought in line idempotently by every process at start-up."""

from __future__ import annotations

from nats.js.api import StorageType

from echelon_platform.adapters.bus import Bus
from echelon_platform.config import Settings
from echelon_platform.domain.events import Subjects


async def test_every_process_may_ensure_the_stream_and_config_changes_apply(settings: Settings) -> None:
    subjects = Subjects(settings.subject_root)
    url = str(settings.nats_url)
    async with Bus(url, stream=settings.stream_name, subjects=subjects, duplicate_window_s=60) as first:
        async with Bus(url, stream=settings.stream_name, subjects=subjects, duplicate_window_s=60):
            pass  # a second process with the same config: no error
        async with Bus(url, stream=settings.stream_name, subjects=subjects, duplicate_window_s=90, max_age_s=3600):
            info = await first.js.stream_info(settings.stream_name)
    assert info.config.duplicate_window == 90
    assert info.config.max_age == 3600
    assert info.config.subjects == [f"{settings.subject_root}.>"]
    assert info.config.storage == StorageType.FILE
