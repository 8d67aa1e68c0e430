"""The embedded servers a test session starts survive what another session on the machine does."""

from __future__ import annotations

import getpass
import os
import stat
import tempfile
from pathlib import Path

import asyncpg
import pytest

from echelon.embedded import StackUrls


async def test_another_pytest_session_does_not_take_the_embedded_postgres_away(infra: StackUrls) -> None:
    # A pytest session that starts makes its per-user directory private again (0700, pytest's tmpdir.py):
    # the session's embedded PostgreSQL, which runs as another user, lived under it and panicked at its
    # next checkpoint ("could not open file .../global/pg_control: Permission denied"), failing every test
    # after it.
    if os.environ.get("ECHELON_TEST_DATABASE_URL"):
        pytest.skip("the servers are given by the environment, not started by this session")
    shared = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
    if shared.exists():
        mode = stat.S_IMODE(shared.stat().st_mode)
        shared.chmod(mode & ~0o077)  # exactly what the other session does
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.execute("CHECKPOINT")  # the checkpointer opens the data directory's control file
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
