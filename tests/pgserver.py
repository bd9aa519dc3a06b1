"""A throwaway PostgreSQL server for tests: initdb into a temporary folder, `postgres` on a free 127.0.0.1 port.

The server runs as the current user; as root (which PostgreSQL refuses) it runs as the `postgres` system user
that Debian's package creates, else as `nobody`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port


def pg_bin() -> Path | None:
    """The folder holding initdb and postgres: on PATH, else the newest /usr/lib/postgresql/<ver>/bin (Debian)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _server_user() -> pwd.struct_passwd | None:
    """None to run as ourselves; an unprivileged account when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged account (postgres, nobody) to run PostgreSQL as")


class PostgresServer:
    """initdb + postgres (trust auth, no Unix socket, fsync off) in a temporary folder removed by stop()."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.port = free_port()
        self.url = f"postgresql://earshot@127.0.0.1:{self.port}/postgres"
        self.root = Path(tempfile.mkdtemp(prefix="earshot-pg-"))
        self.user = _server_user()
        self.proc: subprocess.Popen | None = None
        self._databases = 0

    def _as_server_user(self) -> dict:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 60.0) -> PostgresServer:
        import psycopg

        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        data, log = self.root / "data", self.root / "server.log"
        env = {**os.environ, "LC_ALL": "C"}
        subprocess.run([str(self.bin / "initdb"), "-D", str(data), "-U", "earshot", "--auth=trust", "-E", "UTF8",
                        "--no-locale", "--no-sync"], cwd=self.root, env=env, check=True, capture_output=True,
                       **self._as_server_user())
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "max_connections=200"],
                cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT, **self._as_server_user())
        deadline = time.time() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def new_database(self) -> str:
        """The URL of a new empty database on this server (one per test keeps tests apart)."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(name="pg", scope="session")
def pg_fixture():
    """One throwaway PostgreSQL server for the session; skipped only when its binaries are not installed."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) not found on PATH or under "
                    "/usr/lib/postgresql/*/bin: apt-get install postgresql")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()
