"""Everything in tests/pgbouncer runs through a private PgBouncer, once in transaction mode, once
in session mode.

`pg_server` is overridden for this folder: its `params` (what the connectors
under test connect with, via `db_params`) go through the bouncer, while test
databases are made and inspected directly (`db_dsn`, `db_conn`). Without a
`pgbouncer` binary these tests fail under CI=true (`.ci/run` installs it) and
are skipped otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.pgbouncer.bouncer import MODES, Bouncer, PooledServer, pgbouncer_binary


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(
            f"{reason} (CI=true: .ci/run installs Debian's pgbouncer; run it, or apt-get "
            "install pgbouncer)"
        )
    pytest.skip(f"{reason}; install it (apt-get install pgbouncer) to run the PgBouncer tests")


@pytest.fixture(scope="session")
def _bouncers() -> Iterator[dict[str, Bouncer]]:
    """This process's bouncers by pool mode, each started once and stopped when the session ends.

    Not in pg_server: a parametrized session fixture is torn down whenever the
    next test on this process has the other mode (often, under xdist), and a
    bouncer per switch cost a start and a stop each time.
    """
    running: dict[str, Bouncer] = {}
    yield running
    for bouncer in running.values():
        bouncer.stop()


@pytest.fixture(scope="session", params=MODES, ids=[f"pgbouncer-{mode}" for mode in MODES])
def pg_server(
    request: pytest.FixtureRequest, pg_server: Any, _bouncers: dict[str, Bouncer]
) -> PooledServer:
    """The suite's server behind a private PgBouncer in the mode of this run."""
    mode = request.param
    if mode not in _bouncers:
        binary = pgbouncer_binary()
        if binary is None:
            _missing("pgbouncer is not installed")
        assert binary is not None
        # Every server connection checked: the reset after each test ends them all.
        _bouncers[mode] = Bouncer(
            binary, mode, pg_server.params, check_every_server_connection=True
        )
    return PooledServer(pg_server, _bouncers[mode])


@pytest.fixture
def pgbouncer(pg_server: PooledServer) -> Bouncer:
    return pg_server.bouncer


@pytest.fixture
def pooled_params(pgbouncer: Bouncer, db_name: str) -> dict[str, str]:
    """libpq keywords of the test database through the bouncer."""
    return {**pgbouncer.params, "dbname": db_name}


@pytest.fixture
def pooled_dsn(pooled_params: dict[str, str]) -> str:
    return psycopg.conninfo.make_conninfo(**pooled_params)


@pytest.fixture
def direct_listen_dsn(pg_server: PooledServer) -> str:
    """Where a listener reaches the server itself: host and port only,
    the rest is the main DSN's."""
    direct = pg_server.direct.params
    return psycopg.conninfo.make_conninfo(
        host=direct.get("host", ""), port=direct.get("port", "5432")
    )
