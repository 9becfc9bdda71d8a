"""The connector contract suite (tests/integration/test_connector_contract.py and
test_connector_contract_workers.py), every real connector through PgBouncer.

Its tests are imported as they are; what changes is the connectors: each
Case is rebuilt to connect through the bouncer of this run (see conftest.py's
`pg_server`) and to say so: `pooler="transaction"` (psycopg then prepares no
statement, and the async connectors LISTEN on `listen_dsn`, the server
itself), or `pooler="session"` (LISTEN goes through the bouncer, which works in
that mode). The Django case goes through Django's own connection to the
bouncer (Django's psycopg backend prepares nothing by default). The in-memory
case has no database and is left out.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import psycopg
import pytest

from tests.integration import connector_cases as contract
from tests.integration import test_connector_contract, test_connector_contract_workers
from tests.integration.connector_cases import *  # noqa: F403 - the contract's fixtures
from tests.integration.connector_cases import _forget_django_aliases  # noqa: F401 - autouse
from tests.pgbouncer.bouncer import Bouncer, PooledServer

#: Set for each test by `_this_bouncer`: the mode and the direct DSN of the run.
CURRENT: dict[str, Any] = {}


def _pooled(case: contract.Case) -> contract.Case:
    original = case.build

    def build(dsn: str, **kwargs: Any) -> Any:
        if case.name == "django":
            return original(dsn, **kwargs)
        extra: dict[str, Any] = {"pooler": CURRENT["mode"]}
        if case.kind == "async" and CURRENT["mode"] == "transaction":
            extra["listen_dsn"] = CURRENT["listen_dsn"]
        return original(dsn, **extra, **kwargs)

    return dataclasses.replace(case, build=build)


POOLED = {case.name: _pooled(case) for case in contract.CASES if case.real}


def _swap(values: list[Any]) -> list[Any]:
    return [POOLED[value.name] for value in values if value.name in POOLED]


def _rebind(test: Any) -> Any:
    """A copy of a contract test whose Case parametrizations use the pooled cases."""
    marks = []
    for mark in getattr(test, "pytestmark", []):
        if mark.name == "parametrize" and any(isinstance(v, contract.Case) for v in mark.args[1]):
            values = _swap(list(mark.args[1]))
            mark = pytest.mark.parametrize(mark.args[0], values, ids=[v.name for v in values]).mark
        marks.append(mark)
    clone = types.FunctionType(
        test.__code__, test.__globals__, test.__name__, test.__defaults__, test.__closure__
    )
    clone.__dict__.update(test.__dict__)
    clone.__dict__["pytestmark"] = marks
    return clone


for _part in (test_connector_contract, test_connector_contract_workers):
    for _name in [name for name in dir(_part) if name.startswith("test_")]:
        globals()[_name] = _rebind(getattr(_part, _name))


@pytest.fixture(autouse=True)
def _this_bouncer(pg_server: PooledServer, pgbouncer: Bouncer) -> None:
    direct = pg_server.direct.params
    CURRENT["mode"] = pgbouncer.mode
    CURRENT["listen_dsn"] = psycopg.conninfo.make_conninfo(
        host=direct.get("host", ""), port=direct.get("port", "5432")
    )


def _make(request: pytest.FixtureRequest) -> contract.Harness:
    return contract._make_harness(request)


_ALL = list(POOLED.values())
_SYNC = [case for case in _ALL if case.kind == "sync"]
_ASYNC = [case for case in _ALL if case.kind == "async"]
_TRANSACTIONAL = [case for case in _ALL if case.transaction is not None]


def _names(cases: list[contract.Case]) -> list[str]:
    return [case.name for case in cases]


@pytest.fixture(params=_ALL, ids=_names(_ALL))  # type: ignore[no-redef]  # overrides the contract's
def harness(request: pytest.FixtureRequest) -> contract.Harness:
    return _make(request)


@pytest.fixture(params=_SYNC, ids=_names(_SYNC))  # type: ignore[no-redef]  # overrides the contract's
def sync_harness(request: pytest.FixtureRequest) -> contract.Harness:
    return _make(request)


@pytest.fixture(params=_ASYNC, ids=_names(_ASYNC))  # type: ignore[no-redef]  # overrides the contract's
def async_harness(request: pytest.FixtureRequest) -> contract.Harness:
    return _make(request)


@pytest.fixture(params=_TRANSACTIONAL, ids=_names(_TRANSACTIONAL))  # type: ignore[no-redef]  # overrides the contract's
def transactional_harness(request: pytest.FixtureRequest) -> contract.Harness:
    return _make(request)


@pytest.fixture(params=_ALL, ids=_names(_ALL))  # type: ignore[no-redef]  # overrides the contract's
def real_case(request: pytest.FixtureRequest) -> contract.Case:
    return request.param  # type: ignore[no-any-return]
