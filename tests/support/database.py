"""Finding a PostgreSQL server for the tests, and the template of our schema on it.

Order: PROCRASTINATE_TEST_DSN (or DATABASE_URL), else the libpq environment
(PGHOST...), else 127.0.0.1:5432, else an embedded server (pgserver) started
once for the run; PROCRASTINATE_TEST_EMBEDDED=1 skips straight to the embedded
one. The server found is exported as PROCRASTINATE_TEST_DSN, so the pytest-xdist
workers and every subprocess a test starts (a worker, `manage.py`) use the same
server instead of starting another one.

Each test process's own database, emptied between tests, is
tests/support/worker_database.py. Tests that need a database of their own
(with the schema or without) create it (`TestServer.create_database`).
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from typing import Any

import psycopg
from psycopg import sql

from procrastinate_core.connectors.params import parse_dsn

#: Where the chosen server is handed to subprocesses.
DSN_VARIABLE = "PROCRASTINATE_TEST_DSN"
_counter = itertools.count()
_found: TestServer | None = None


class TestServer:
    """A reachable server: how to connect to it and to the databases we create."""

    __test__ = False  # not a test class, despite its name

    def __init__(self, params: dict[str, str], embedded: Any = None) -> None:
        self.params = {k: v for k, v in params.items() if v not in (None, "")}
        self.embedded = embedded
        self.prefix = f"pcq_test_{os.getpid()}"
        self.template: str | None = None

    def conninfo(self, dbname: str | None = None, **extra: str) -> str:
        params = dict(self.params)
        if dbname:
            params["dbname"] = dbname
        params.update(extra)
        return psycopg.conninfo.make_conninfo(**params)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo(), autocommit=True)

    def create_database(self, template: str | None = None, schema: bool = True) -> str:
        name = f"{self.prefix}_{next(_counter)}"
        self.create_named_database(name, template or (self.ensure_template() if schema else None))
        return name

    def create_named_database(self, name: str, template: str | None) -> None:
        with self.admin() as conn:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            if conn.info.server_version >= 150000:
                # PostgreSQL 15's default (WAL_LOG) writes every block of the template
                # to the WAL: ~140 ms of CPU per clone here, against ~60 ms for a copy
                # of its files (and ~170 clones in a run).
                query += sql.SQL(" STRATEGY FILE_COPY")
            conn.execute(query)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def ensure_template(self) -> str:
        if self.template is None:
            from procrastinate_core.schema import read_schema

            name = f"{self.prefix}_template"
            with self.admin() as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            with psycopg.connect(self.conninfo(name), autocommit=True) as conn:
                conn.execute(read_schema())
            self.template = name
            atexit.register(self.drop_database, name)
        return self.template


def _reachable(params: dict[str, Any]) -> bool:
    try:
        psycopg.connect(connect_timeout=3, **params).close()
    except psycopg.Error:
        return False
    return True


def _with_port(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters plus the server's port, which a socket-only server's URI leaves out.

    A Unix socket has a port too (its file is .s.PGSQL.<port>): knowing it lets
    tests hand out complete PG* variables (PGHOST=/socket/dir PGPORT=5432).
    """
    if params.get("port"):
        return params
    with psycopg.connect(connect_timeout=10, **params) as conn:
        row = conn.execute("SELECT current_setting('port')").fetchone()
    return {**params, "port": str(row[0])} if row else params


def _start_embedded() -> TestServer:
    from pgserver.postgres_server import get_server  # what pgserver.get_server is

    folder = tempfile.mkdtemp(prefix="pcq-pgserver-")
    server = get_server(folder, cleanup_mode="stop")
    owner = os.getpid()

    def cleanup() -> None:
        if os.getpid() != owner:  # a forked child exiting: the server is not its to stop
            return
        try:
            server.cleanup()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(cleanup)
    return TestServer(_with_port(parse_dsn(server.get_uri())), embedded=server)


def _locate() -> TestServer:
    dsn = os.environ.get(DSN_VARIABLE) or os.environ.get("DATABASE_URL")
    if dsn:
        params = parse_dsn(dsn)
        if not _reachable(params):
            raise RuntimeError(f"{DSN_VARIABLE}/DATABASE_URL is set but unreachable: {dsn!r}")
        return TestServer(_with_port(params))
    if os.environ.get("PROCRASTINATE_TEST_EMBEDDED") != "1":
        if os.environ.get("PGHOST") and _reachable({}):
            return TestServer(
                _with_port(
                    {
                        "host": os.environ["PGHOST"],
                        "dbname": os.environ.get("PGDATABASE", "postgres"),
                    }
                )
            )
        local = {"host": "127.0.0.1", "port": "5432", "dbname": "postgres"}
        if _reachable(local):
            return TestServer(local)
    return _start_embedded()


def find_server() -> TestServer:
    """The run's server, found (or started) once per process and exported to subprocesses."""
    global _found
    if _found is None:
        _found = _locate()
        os.environ[DSN_VARIABLE] = _found.conninfo()
    return _found
