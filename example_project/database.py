"""Where the example project's database is: DATABASE_URL, else PG*, else an embedded PostgreSQL.

The embedded server (the `pgserver` package) lives in example_project/.pgdata
(EXAMPLE_PGDATA overrides it) and is shared by every process of the project
(the web server, the worker); it stops when the last of them exits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from procrastinate_core.connectors.params import parse_dsn

EXAMPLE_DB = "procrastinate_example"
PGDATA = Path(os.environ.get("EXAMPLE_PGDATA") or Path(__file__).resolve().parent / ".pgdata")
_LIBPQ_ENV = ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE", "PGPASSWORD")


def _from_params(params: dict[str, str], name: str) -> dict[str, Any]:
    options = {
        k: v for k, v in params.items() if k not in {"host", "port", "user", "password", "dbname"}
    }
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.get("dbname") or name,
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
        "OPTIONS": options,
    }


def _ensure_database(params: dict[str, str], name: str) -> None:
    """Create the example's database on a server we started or were pointed at, if missing."""
    import psycopg
    from psycopg import sql

    admin = {**params, "dbname": "postgres"}
    with psycopg.connect(**admin, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _create_example_database() -> None:
    import psycopg

    try:
        _ensure_database({}, EXAMPLE_DB)
    except psycopg.Error as exc:
        raise RuntimeError(
            f"cannot create the example's database {EXAMPLE_DB!r} with the PG* settings "
            f"({exc}); create it yourself, or set PGDATABASE to an existing database."
        ) from exc


def _embedded() -> dict[str, str]:
    try:
        import pgserver
    except ImportError as exc:
        raise RuntimeError(
            "No DATABASE_URL or PG* variables are set and the embedded PostgreSQL is not "
            "installed: `pip install -e '.[embedded]'` (scripts/install does it), or set "
            "DATABASE_URL=postgresql://user:password@host/dbname."
        ) from exc
    PGDATA.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(PGDATA, cleanup_mode="stop")
    params = parse_dsn(server.get_uri())
    params.pop("dbname", None)
    return params


def database_settings() -> dict[str, Any]:
    """DATABASES['default'] for the example project."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return _from_params(parse_dsn(url), EXAMPLE_DB)
    if any(os.environ.get(var) for var in _LIBPQ_ENV):
        # libpq reads PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSERVICE... itself.
        if not os.environ.get("PGDATABASE"):
            _create_example_database()
        return _from_params({}, os.environ.get("PGDATABASE") or EXAMPLE_DB)
    params = _embedded()
    _ensure_database(params, EXAMPLE_DB)
    return _from_params(params, EXAMPLE_DB)
