"""Shared fixtures: a real PostgreSQL (local, configured, or embedded), an empty database per test.

`db_name` is this process's database (one per pytest-xdist worker), emptied
after each test (tests/support/worker_database.py says how); `own_db_name` is a new
database with the schema and `empty_db_name` a new one without it, each created
for the test and dropped after it.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

import procrastinate_core as pc
from tests.support.database import TestServer, find_server
from tests.support.worker_database import WorkerDatabase

pytest_plugins = ["tests.support.serial_phase"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Collected tests, modules and fixtures live as long as the session: out of the GC's way.

    A full collection walks every tracked object; frozen ones are skipped
    (gc.freeze), so each of the thousands of tests no longer pays for the
    whole collection again.
    """
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def pg_server() -> TestServer:
    return find_server()


@pytest.fixture(scope="session")
def _worker_databases() -> Iterator[dict[str, WorkerDatabase]]:
    """This process's databases by name, dropped when the session ends (and only then)."""
    databases: dict[str, WorkerDatabase] = {}
    yield databases
    for database in databases.values():
        database.drop()


@pytest.fixture(scope="session")
def worker_database(
    pg_server: TestServer, _worker_databases: dict[str, WorkerDatabase]
) -> WorkerDatabase:
    """This process's database on pg_server, made once per session.

    A session fixture that depends on a parametrized one (tests/pgbouncer
    overrides pg_server with one per pool mode) is torn down each time the
    next test on this process has another parameter, which under xdist is
    often: the database lives in the registry instead, so a switch costs a
    lookup, not a DROP DATABASE (each one a checkpoint the whole server waits
    on: some 550 per run before).
    """
    name = WorkerDatabase.name_on(pg_server)
    if name not in _worker_databases:
        # The server itself, not a bouncer in front of it (the reset goes direct).
        _worker_databases[name] = WorkerDatabase(getattr(pg_server, "direct", pg_server))
    return _worker_databases[name]


@pytest.fixture
def db_name(worker_database: WorkerDatabase) -> Iterator[str]:
    """A database with the schema applied and no rows, as if fresh; emptied after the test."""
    yield worker_database.name
    contract = sys.modules.get("tests.django.contract")
    if contract is not None:  # Django aliases on this database (the contract's Django case)
        contract.forget_all()
    worker_database.reset()


@pytest.fixture
def own_db_name(pg_server: TestServer) -> Iterator[str]:
    """A database of the test's own, cloned from the template (schema applied), dropped after it.

    For a test that must not share the worker's database, e.g. one whose
    leftovers the reset could not see (another role's sessions, a database-wide setting).
    """
    name = pg_server.create_database()
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def empty_db_name(pg_server: TestServer) -> Iterator[str]:
    """A fresh database without our schema."""
    name = pg_server.create_database(schema=False)
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def db_dsn(pg_server: TestServer, db_name: str) -> str:
    return pg_server.conninfo(db_name)


@pytest.fixture
def db_params(pg_server: TestServer, db_name: str) -> dict[str, str]:
    return {**pg_server.params, "dbname": db_name}


@pytest.fixture
def db_conn(db_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test database, for assertions."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def connector(db_dsn: str) -> pc.PsycopgConnector:
    return pc.PsycopgConnector(conninfo=db_dsn, min_size=1, max_size=10)


@pytest.fixture
def sync_connector(db_dsn: str) -> pc.SyncPsycopgConnector:
    return pc.SyncPsycopgConnector(conninfo=db_dsn, min_size=1, max_size=10)


@pytest.fixture
def app(connector: pc.PsycopgConnector) -> Iterator[pc.App]:
    """An App on the async connector, opened for sync use (defer from sync code)."""
    app = pc.App(connector=connector)
    with app.open():
        yield app


@pytest.fixture
async def async_app(connector: pc.PsycopgConnector) -> AsyncIterator[pc.App]:
    """An App on the async connector, opened for async use (workers, defer_async)."""
    app = pc.App(connector=connector)
    async with app.open_async():
        yield app
