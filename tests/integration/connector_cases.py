"""The connectors under contract: one `Case` per connector, and fixtures that run a test for each.

The contract itself (the same tests against every connector, on a real
PostgreSQL) is tests/integration/test_connector_contract.py and
test_connector_contract_workers.py; other suites (flow control, readiness,
rate limits, PgBouncer) take their connectors from here too.

Each connector is described by a `Case` in CASES:

- `build(dsn, **hooks)` makes the connector for a database (`dsn` is a
  postgresql:// URL; `hooks` are json_dumps/json_loads);
- `kind` is "async" (runs workers, listens) or "sync" (defers only);
- `real`: talks to PostgreSQL (so it must refuse use before open and report
  a dead database); the in-memory connector is not;
- `transaction`: a context manager factory `(dsn, commit) -> connection` that
  opens a connection of the connector's library, begins a transaction, yields
  the connection, and commits or rolls back; None if the library cannot join
  a caller's transaction.

To add a connector (the Django one, say), write one more `Case` and append it
to CASES: `Case("django", build=..., kind="sync", transaction=...)`. Its
`build` receives the test database's URL; a connector configured elsewhere
(Django's DATABASES) can point its settings at that URL there. Every contract
test then runs for it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core.connectors.base import BaseConnector
from procrastinate_core.testing import InMemoryConnector
from tests.django import contract as django_contract

DEAD_URL = "postgresql://ghost:s3cret-pw@127.0.0.1:1/nowhere?connect_timeout=2"


@contextlib.contextmanager
def psycopg3_transaction(dsn: str, commit: bool) -> Iterator[Any]:
    with psycopg.connect(dsn) as conn:
        with conn.transaction(force_rollback=not commit):
            yield conn


@contextlib.contextmanager
def psycopg2_transaction(dsn: str, commit: bool) -> Iterator[Any]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        yield conn  # psycopg2 opens a transaction at the first statement
        conn.commit() if commit else conn.rollback()
    finally:
        conn.close()


@contextlib.contextmanager
def sqlalchemy_transaction(dsn: str, commit: bool) -> Iterator[Any]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            yield conn
            transaction.commit() if commit else transaction.rollback()
    finally:
        engine.dispose()


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[..., BaseConnector]
    kind: str
    real: bool = True
    transaction: Callable[[str, bool], contextlib.AbstractContextManager[Any]] | None = None
    #: False for a connector on a connection someone else owns (Django's): usable without open().
    requires_open: bool = True


CASES = [
    Case(
        "psycopg",
        lambda dsn, **kw: pc.PsycopgConnector(conninfo=dsn, min_size=1, max_size=4, **kw),
        "async",
        transaction=psycopg3_transaction,
    ),
    Case(
        "sync_psycopg",
        lambda dsn, **kw: pc.SyncPsycopgConnector(conninfo=dsn, min_size=1, max_size=4, **kw),
        "sync",
        transaction=psycopg3_transaction,
    ),
    Case(
        "aiopg",
        lambda dsn, **kw: pc.AiopgConnector(dsn=dsn, minsize=1, maxsize=4, **kw),
        "async",
        transaction=psycopg2_transaction,
    ),
    Case(
        "psycopg2",
        lambda dsn, **kw: pc.Psycopg2Connector(dsn=dsn, minconn=1, maxconn=4, **kw),
        "sync",
        transaction=psycopg2_transaction,
    ),
    Case(
        "sqlalchemy",
        lambda dsn, **kw: pc.SQLAlchemyPsycopg2Connector(dsn=dsn, pool_size=4, **kw),
        "sync",
        transaction=sqlalchemy_transaction,
    ),
    Case("in_memory", lambda dsn, **kw: InMemoryConnector(**kw), "async", real=False),
    Case(
        "django",
        lambda dsn, **kw: django_contract.build(dsn, **kw),
        "sync",
        transaction=lambda dsn, commit: django_contract.transaction(dsn, commit),
        requires_open=False,
    ),
]
REAL = [case for case in CASES if case.real]
NEEDS_OPEN = [case for case in REAL if case.requires_open]


def url_of(params: dict[str, str]) -> str:
    auth = quote(params.get("user", ""), safe="")
    if params.get("password"):
        auth += ":" + quote(params["password"], safe="")
    host, port, dbname = params.get("host", ""), params.get("port", "5432"), params["dbname"]
    if host.startswith("/"):  # a socket directory (embedded server)
        return f"postgresql://{auth}@/{dbname}?host={quote(host, safe='')}&port={port}"
    return f"postgresql://{auth + '@' if auth else ''}{host}:{port}/{dbname}"


class Harness:
    """One connector under test, with an independent view of the jobs it wrote."""

    def __init__(self, case: Case, url: str | None, db_conn: Any) -> None:
        self.case = case
        self.url = url or ""
        self.db_conn = db_conn

    def connector(self, **hooks: Any) -> BaseConnector:
        return self.case.build(self.url, **hooks)

    def app(self, **hooks: Any) -> pc.App:
        app = pc.App(connector=self.connector(**hooks))
        self.last_connector = app.connector
        return app

    def jobs(self) -> list[tuple[str, Any]]:
        """(task_name, args) of every job, by id, read without the connector under test."""
        if self.db_conn is None:
            stored = self.last_connector.jobs  # type: ignore[attr-defined]
            return [(job["task_name"], job["args"]) for _, job in sorted(stored.items())]
        return self.db_conn.execute("SELECT task_name, args FROM pcq_jobs ORDER BY id").fetchall()


def _make_harness(request: pytest.FixtureRequest) -> Harness:
    case: Case = request.param
    if not case.real:
        return Harness(case, None, None)
    params = request.getfixturevalue("db_params")
    return Harness(case, url_of(params), request.getfixturevalue("db_conn"))


def _ids(cases: list[Case]) -> list[str]:
    return [case.name for case in cases]


SYNC = [case for case in CASES if case.kind == "sync"]
ASYNC = [case for case in CASES if case.kind == "async"]
REAL_ASYNC = [case for case in REAL if case.kind == "async"]
TRANSACTIONAL = [case for case in CASES if case.transaction is not None]


@pytest.fixture(autouse=True)
def _forget_django_aliases() -> Iterator[None]:
    """Django aliases point at this test's database, which is dropped after it."""
    yield
    django_contract.forget_all()


@pytest.fixture(params=CASES, ids=_ids(CASES))
def harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


@pytest.fixture(params=SYNC, ids=_ids(SYNC))
def sync_harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


@pytest.fixture(params=ASYNC, ids=_ids(ASYNC))
def async_harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


@pytest.fixture(params=TRANSACTIONAL, ids=_ids(TRANSACTIONAL))
def transactional_harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


@pytest.fixture(params=REAL, ids=_ids(REAL))
def real_case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture(params=CASES, ids=_ids(CASES))
def every_connector(request: pytest.FixtureRequest) -> Harness:
    """Every connector (the in-memory one too): for the suites beyond the contract."""
    return _make_harness(request)


@pytest.fixture(params=ASYNC, ids=_ids(ASYNC))
def async_connector(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)
