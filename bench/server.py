"""The PostgreSQL server the benchmark runs on, and its scratch databases.

Order: --dsn, else 127.0.0.1:5432, else an embedded server (pgserver). With
--private-server, a private instance of the local PostgreSQL binaries is
started with pg_stat_statements preloaded, so statements per job can be
counted (the shared server is never reconfigured). Every system gets a
template database with its schema; each measurement runs in a fresh clone.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

_counter = itertools.count()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (0 when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    """The first column of the first row of a query that always returns one."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query!r}")
    return row[0]


@dataclass
class Snapshot:
    """Counters of one scratch database at one moment."""

    commits: int
    statements: int | None
    backend_cpu: dict[int, float] = field(default_factory=dict)


class Server:
    def __init__(self, conninfo: str, description: str, private: Any = None) -> None:
        self.conninfo = conninfo
        self.description = description
        self.private = private
        self.templates: dict[str, str] = {}
        self.prefix = f"pcq_bench_{os.getpid()}"
        with self.admin() as conn:
            self.version = scalar(conn, "SHOW server_version")
            self.sync_commit = scalar(conn, "SHOW synchronous_commit")
            self.has_statements = False
            preload = scalar(conn, "SHOW shared_preload_libraries")
            try:
                if "pg_stat_statements" not in preload:
                    raise psycopg.Error("not preloaded")
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                conn.execute("SELECT 1 FROM pg_stat_statements LIMIT 1")
                self.has_statements = True
            except psycopg.Error:
                pass
        atexit.register(self.cleanup)

    def dsn(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(self.conninfo, dbname=dbname)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo, autocommit=True)

    def template_for(self, system: Any) -> str:
        if system.name not in self.templates:
            name = f"{self.prefix}_tpl_{system.name.replace('-', '_')}"
            self._create(name, None)
            system.install(self.dsn(name))
            self.templates[system.name] = name
        return self.templates[system.name]

    def scratch(self, system: Any) -> str:
        name = f"{self.prefix}_{next(_counter)}"
        self._create(name, self.template_for(system))
        return name

    def _create(self, name: str, template: str | None) -> None:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(query)

    def drop(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def reset_statements(self, dbname: str) -> None:
        if self.has_statements:
            with self.admin() as conn:
                oid = scalar(conn, "SELECT oid FROM pg_database WHERE datname = %s", (dbname,))
                conn.execute("SELECT pg_stat_statements_reset(0, %s, 0)", (oid,))

    def snapshot(self, dbname: str, exclude_pids: tuple[int, ...] = ()) -> Snapshot:
        """Commits (and statements) so far in dbname, and its backends' CPU seconds."""
        with self.admin() as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            commits = scalar(
                conn, "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (dbname,)
            )
            statements = None
            if self.has_statements:
                # Transaction control is counted as commits; the bench's own
                # polling queries carry the marker "bench_poll" and are left out.
                statements = scalar(
                    conn,
                    """SELECT coalesce(sum(s.calls), 0)::bigint FROM pg_stat_statements AS s
                       JOIN pg_database AS d ON d.oid = s.dbid
                       WHERE d.datname = %s AND s.query NOT LIKE '%%bench_poll%%'
                         AND upper(s.query) NOT IN ('BEGIN', 'COMMIT', 'ROLLBACK')
                         AND s.query NOT ILIKE 'LISTEN%%' AND s.query NOT ILIKE 'SET %%'""",
                    (dbname,),
                )
            pids = [
                row[0]
                for row in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,)
                ).fetchall()
                if row[0] not in exclude_pids
            ]
        return Snapshot(commits, statements, {pid: proc_cpu_seconds(pid) for pid in pids})

    def cleanup(self) -> None:
        try:
            for name in list(self.templates.values()):
                self.drop(name)
            self.templates.clear()
        except psycopg.Error:
            pass
        if self.private is not None:
            self.private()
            self.private = None


def _reachable(conninfo: str) -> bool:
    try:
        psycopg.connect(conninfo, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def _bin_dir() -> str:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        if os.path.exists(os.path.join(out.stdout.strip(), "initdb")):
            return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("--private-server needs PostgreSQL's initdb (install postgresql)")
    return os.path.dirname(found[-1])


def start_private(port: int = 54329) -> Server:
    """A private PostgreSQL with pg_stat_statements, stopped and removed at exit."""
    bindir = _bin_dir()
    folder = tempfile.mkdtemp(prefix="pcq-bench-pg-")
    data = os.path.join(folder, "data")
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(folder, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    run = lambda *cmd: subprocess.run([*prefix, *cmd], check=True, capture_output=True)  # noqa: E731
    run(os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres")
    options = (
        f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder} "
        "-c shared_preload_libraries=pg_stat_statements -c max_connections=200"
    )
    run(
        os.path.join(bindir, "pg_ctl"),
        "-D",
        data,
        "-o",
        options,
        "-l",
        os.path.join(folder, "log"),
        "-w",
        "start",
    )

    def stop() -> None:
        subprocess.run(
            [*prefix, os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "fast", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)

    conninfo = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    return Server(conninfo, f"private instance ({bindir}), pg_stat_statements", private=stop)


def find_server(dsn: str | None, private: bool) -> Server:
    if private:
        return start_private()
    if dsn:
        if not _reachable(dsn):
            raise RuntimeError(f"--dsn {dsn!r} is unreachable")
        return Server(dsn, "given by --dsn")
    local = "host=127.0.0.1 port=5432 dbname=postgres"
    if _reachable(local):
        return Server(local, "127.0.0.1:5432")
    import pgserver

    folder = tempfile.mkdtemp(prefix="pcq-bench-pgserver-")
    embedded = pgserver.get_server(folder, cleanup_mode="stop")

    def stop() -> None:
        try:
            embedded.cleanup()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return Server(embedded.get_uri(), "embedded (pgserver)", private=stop)


def wait_until(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
