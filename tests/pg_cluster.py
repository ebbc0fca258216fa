"""A throw-away PostgreSQL server for the tests.

`initdb` into a fresh temporary folder, `pg_ctl start` listening only on 127.0.0.1 at a
free port (its unix socket inside that folder), trust authentication for one superuser,
no fsync (the data is thrown away). initdb refuses to run as root, so as root the
server runs as Debian's `postgres` system user, through `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "autotl"
SYSTEM_USER = "postgres"  # created by Debian's postgresql package
START_TIMEOUT_S = 60


class Unavailable(Exception):
    """What the machine lacks to run a server (the tests that need one are skipped)."""


def find_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl: from PATH, else Debian's /usr/lib/postgresql/*/bin (newest)."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        folder = Path(initdb).resolve().parent
        if (folder / "pg_ctl").is_file():
            return folder
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda path: _version_key(Path(path).parent.parent.name), reverse=True)
    for initdb in candidates:
        folder = Path(initdb).parent
        if (folder / "pg_ctl").is_file():
            return folder
    raise Unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                      "/usr/lib/postgresql/*/bin; install Debian's postgresql (.ci/run does)")


def _version_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in name.split("."))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """One running server; `stop()` shuts it down and removes its folder."""

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self._as_user = self._run_as_prefix()
        self.root = Path(tempfile.mkdtemp(prefix="autotl-pg-"))
        self.data, self.sockets, self.log = self.root / "data", self.root / "sockets", self.root / "server.log"
        self.port = 0
        self.sockets.mkdir()
        if self._as_user:
            account = pwd.getpwnam(SYSTEM_USER)
            for path in (self.root, self.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)

    @staticmethod
    def _run_as_prefix() -> list[str]:
        """`runuser -u postgres --` when running as root (initdb refuses root), else nothing."""
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise Unavailable(f"running as root and there is no {SYSTEM_USER!r} user to run PostgreSQL as") from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise Unavailable("running as root and `runuser` is missing to run PostgreSQL as another user")
        return [runuser, "-u", SYSTEM_USER, "--"]

    def _run(self, tool: str, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        command = [*self._as_user, str(self.bin_dir / tool), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.is_file() else ""
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{log}")

    def start(self) -> "Cluster":
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        for attempt in range(3):  # the free port may be taken before the server binds it
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                          "-w", "-t", str(START_TIMEOUT_S), "start", timeout=START_TIMEOUT_S + 10)
                return self
            except RuntimeError:
                if attempt == 2:
                    raise
        return self

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").is_file():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start() -> Cluster:
    """A running throw-away server. Raises Unavailable when the machine cannot run one."""
    try:
        import psycopg2  # noqa: F401  (the driver the URLs name)
    except ImportError:
        raise Unavailable("psycopg2 is not installed (pip install -e '.[test]')") from None
    cluster = Cluster()
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise
