"""Psycopg2Connector quirks: parameters, the threaded pool under load, broken connections,
your pool."""

from __future__ import annotations

import threading

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from tests.support.waiting import wait_until

ENVIRONMENT = {
    "host": "PGHOST",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
}
OURS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
    "application_name = %s"
)


def test_parameters_three_ways(db_dsn, db_params, monkeypatch):
    by_dsn = pc.Psycopg2Connector(dsn=db_dsn)
    by_keywords = pc.Psycopg2Connector(**db_params)
    for key, value in db_params.items():
        monkeypatch.setenv(ENVIRONMENT[key], value)
    by_environment = pc.Psycopg2Connector()
    for connector in (by_dsn, by_keywords, by_environment):
        connector.open()
        try:
            assert connector.execute_query_one("schema_is_installed") == {"installed": True}
        finally:
            connector.close()


def test_pool_arguments_pass_through(db_dsn, db_conn):
    import psycopg2.extensions

    class Tagged(psycopg2.extensions.connection):
        pass

    connector = pc.Psycopg2Connector(
        dsn=db_dsn, minconn=2, maxconn=5, connection_factory=Tagged, application_name="shop"
    )
    connector.open()
    try:
        assert (connector.pool.minconn, connector.pool.maxconn) == (2, 5)
        assert all(isinstance(conn, Tagged) for conn in connector.pool._pool)
        assert db_conn.execute(OURS, ("shop",)).fetchone() == (2,)
    finally:
        connector.close()


def test_many_threads_share_a_small_pool(db_dsn, db_conn):
    """A threaded web server: more threads than connections; they wait, none fails."""
    # psycopg2's pool keeps at most `minconn` idle connections: minconn=maxconn keeps them all.
    app = pc.App(connector=pc.Psycopg2Connector(dsn=db_dsn, minconn=2, maxconn=2))
    errors: list[BaseException] = []
    peak = 0

    def work(thread: int) -> None:
        try:
            for i in range(25):
                app.configure_task("t").defer(thread=thread, i=i)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    with app.open():
        # The probe connection of open() is closed; wait until its backend is gone too.
        wait_until(
            lambda: db_conn.execute(OURS, ("procrastinate_core",)).fetchone() == (2,),
            what="the pool",
        )
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, db_conn.execute(OURS, ("procrastinate_core",)).fetchone()[0])
            threads[0].join(0.01)  # sample the server's connections every 10 ms
        for thread in threads:
            thread.join()
    assert errors == []
    rows = db_conn.execute("SELECT args FROM pcq_jobs").fetchall()
    assert sorted((r[0]["thread"], r[0]["i"]) for r in rows) == [
        (t, i) for t in range(8) for i in range(25)
    ]
    assert peak <= 2


def test_a_broken_connection_is_discarded_not_reused(db_dsn, db_conn):
    app = pc.App(connector=pc.Psycopg2Connector(dsn=db_dsn, minconn=1, maxconn=1))
    with app.open():
        app.configure_task("t").defer()
        db_conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'procrastinate_core'"
        )
        wait_until(
            lambda: db_conn.execute(OURS, ("procrastinate_core",)).fetchone() == (0,),
            what="termination",
        )
        # The dead connection fails the call that uses it, loudly and translated...
        with pytest.raises(exceptions.DatabaseConnectionError, match="dbname="):
            app.configure_task("t").defer()
        # ...and is thrown away, so the next call gets a fresh one.
        app.configure_task("t").defer()
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (2,)


def test_your_psycopg2_pool_is_adopted_and_left_open(db_dsn, db_conn):
    from psycopg2.pool import ThreadedConnectionPool

    pool = ThreadedConnectionPool(1, 2, db_dsn)
    try:
        app = pc.App(connector=pc.Psycopg2Connector())
        app.open(pool)
        app.configure_task("t").defer()
        app.close()
        assert not pool.closed
        assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (1,)
    finally:
        pool.closeall()
