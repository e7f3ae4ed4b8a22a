"""A PostgreSQL server for the tests.

`TEST_DATABASE_URL` (a role that may create databases) when set; else, when the
PostgreSQL binaries are installed, a private throwaway cluster on a free loopback
port, removed at the end of the session; else None, and the PostgreSQL tests skip.
Each test gets its own database, copied from a migrated template.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from webhook_service.store.postgres import PostgresStore

TEMPLATE = "webhook_service_template"


def find_binaries() -> Path | None:
    """Return the folder holding initdb and pg_ctl, or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for folder in [*reversed(candidates), *[os.path.dirname(shutil.which("initdb") or "")]]:
        if folder and os.access(os.path.join(folder, "initdb"), os.X_OK):
            return Path(folder)
    return None


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


class PrivateCluster:
    """A throwaway cluster in a temporary folder, listening on 127.0.0.1 only."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.port = free_port()
        self.home = Path(tempfile.mkdtemp(prefix="webhook-service-pg-"))
        self.data = self.home / "data"
        self.log = self.home / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.home, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        subprocess.run(
            [*self._as_user, *command], check=True, capture_output=True, text=True, timeout=120
        )

    def start(self) -> None:
        """initdb and start the server; raise with its log when it does not come up."""
        try:
            self._run(
                str(self.binaries / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port}"
                f" -c unix_socket_directories={self.home} -c max_connections=200"
            )
            self._run(
                str(self.binaries / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            )
        except subprocess.CalledProcessError as error:
            log = self.log.read_text() if self.log.exists() else ""
            self.remove()
            raise RuntimeError(f"PostgreSQL did not start: {error.stderr}{log}") from None

    def stop(self) -> None:
        """Stop the server and delete its files."""
        try:
            self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        except subprocess.CalledProcessError:
            pass
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


class PostgresServer:
    """Databases for tests on one server: a migrated template, one copy per test."""

    _names = itertools.count(1)

    def __init__(self, admin_url: str, cluster: PrivateCluster | None = None) -> None:
        self.admin_url = admin_url
        self.cluster = cluster
        self.prefix = f"webhook_service_test_{os.getpid()}_"
        self.template = f"{self.prefix}template"
        self._template_ready = False

    def _admin(self, sql: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, migrated: bool = True) -> str:
        """Create a fresh database (a copy of the migrated template) and return its URL."""
        name = f"{self.prefix}{next(self._names)}"
        if migrated:
            self._ensure_template()
            self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        else:
            self._admin(f'CREATE DATABASE "{name}"')
        return with_database(self.admin_url, name)

    def drop_database(self, url: str) -> None:
        """Close this process's pools on ``url`` and drop its database."""
        PostgresStore.close_pools(url)
        name = urlsplit(url).path.lstrip("/")
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _ensure_template(self) -> None:
        if self._template_ready:
            return
        self._admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{self.template}"')
        url = with_database(self.admin_url, self.template)
        PostgresStore(url).migrate()  # no pool opened: a template must have no connections
        self._template_ready = True

    def stop(self) -> None:
        """Drop the template and stop a private cluster."""
        if self.cluster is not None:
            self.cluster.stop()
            return
        if self._template_ready:
            self._admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')


def start_server() -> PostgresServer | str:
    """Return a server for the session, or the reason there is none."""
    url = os.environ.get("TEST_DATABASE_URL", "").strip()
    if url:
        return PostgresServer(url)
    binaries = find_binaries()
    if binaries is None:
        return "PostgreSQL is not installed (no initdb) and TEST_DATABASE_URL is not set"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
    cluster = PrivateCluster(binaries)
    cluster.start()
    return PostgresServer(cluster.url, cluster)
