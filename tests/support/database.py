"""Finding a PostgreSQL server for the tests, and making one fresh database per test.

Order: PROCRASTINATE_TEST_DSN (or DATABASE_URL), else the libpq environment
(PGHOST...), else 127.0.0.1:5432, else an embedded server (pgserver) started
once for the run. Each test gets a database cloned from a template that has
the schema applied, and dropped after the test.
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

_counter = itertools.count()


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
        template = template or (self.ensure_template() if schema else None)
        with self.admin() as conn:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(query)
        return name

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


def _reachable(params: dict[str, str]) -> bool:
    try:
        psycopg.connect(connect_timeout=3, **params).close()
    except psycopg.Error:
        return False
    return True


def _start_embedded() -> TestServer:
    import pgserver

    folder = tempfile.mkdtemp(prefix="pcq-pgserver-")
    server = pgserver.get_server(folder, cleanup_mode="stop")

    def cleanup() -> None:
        try:
            server.cleanup()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(cleanup)
    params = parse_dsn(server.get_uri())
    return TestServer(params, embedded=server)


def find_server() -> TestServer:
    dsn = os.environ.get("PROCRASTINATE_TEST_DSN") or os.environ.get("DATABASE_URL")
    if dsn:
        params = parse_dsn(dsn)
        if not _reachable(params):
            raise RuntimeError(f"PROCRASTINATE_TEST_DSN/DATABASE_URL is set but unreachable: {dsn!r}")
        return TestServer(params)
    if os.environ.get("PROCRASTINATE_TEST_EMBEDDED") != "1":
        if os.environ.get("PGHOST") and _reachable({}):
            return TestServer({"host": os.environ["PGHOST"], "dbname": os.environ.get("PGDATABASE", "postgres")})
        local = {"host": "127.0.0.1", "port": "5432", "dbname": "postgres"}
        if _reachable(local):
            return TestServer(local)
    return _start_embedded()
