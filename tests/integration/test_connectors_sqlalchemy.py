"""SQLAlchemyPsycopg2Connector quirks: its own engine, the application's engine,
engine arguments."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.contrib.sqlalchemy import SQLAlchemyPsycopg2Connector
from tests.integration.connector_cases import url_of
from tests.support.worker_database import HARNESS_APPLICATION

ENVIRONMENT = {
    "host": "PGHOST",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
}
OTHERS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> "
    f"pg_backend_pid() AND application_name <> '{HARNESS_APPLICATION}'"
)


def test_parameters_three_ways(db_dsn, db_params, monkeypatch):
    by_url = SQLAlchemyPsycopg2Connector(dsn=url_of(db_params))
    by_conninfo = SQLAlchemyPsycopg2Connector(dsn=db_dsn)
    by_keywords = SQLAlchemyPsycopg2Connector(**db_params)
    for key, value in db_params.items():
        monkeypatch.setenv(ENVIRONMENT[key], value)
    by_environment = SQLAlchemyPsycopg2Connector()
    for connector in (by_url, by_conninfo, by_keywords, by_environment):
        connector.open()
        try:
            assert connector.execute_query_one("schema_is_installed") == {"installed": True}
        finally:
            connector.close()


def test_create_engine_arguments_pass_through(db_params, db_conn):
    connector = SQLAlchemyPsycopg2Connector(
        dsn=url_of(db_params), pool_size=3, max_overflow=1, pool_pre_ping=True, echo=False
    )
    connector.open()
    try:
        assert connector.engine.pool.size() == 3
        assert connector.engine.pool._max_overflow == 1
        assert connector.engine.pool._pre_ping is True
        # The probe connection went back to the engine's pool, tagged as ours.
        names = db_conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name <> %s",
            [HARNESS_APPLICATION],
        ).fetchall()
        assert names == [("procrastinate_core",)]
    finally:
        connector.close()


def test_the_applications_engine_is_shared_not_duplicated(db_params, db_conn):
    """pool_size=2, max_overflow=0: 200 deferrals from 8 threads, never a third connection."""
    engine = sqlalchemy.create_engine(
        url_of(db_params).replace("postgresql://", "postgresql+psycopg2://", 1),
        pool_size=2,
        max_overflow=0,
    )
    app = pc.App(connector=SQLAlchemyPsycopg2Connector())
    errors: list[BaseException] = []
    peak = 0

    def work(thread: int) -> None:
        try:
            for i in range(25):
                app.configure_task("t").defer(thread=thread, i=i)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    try:
        app.open(engine)
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, db_conn.execute(OTHERS).fetchone()[0])
            threads[0].join(0.01)  # sample the server's connections every 10 ms
        for thread in threads:
            thread.join()
        peak = max(peak, db_conn.execute(OTHERS).fetchone()[0])
        app.close()
        # Closing the app leaves the engine to its owner.
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM pcq_jobs").scalar() == 200
    finally:
        engine.dispose()
    assert errors == []
    assert 1 <= peak <= 2
    rows = db_conn.execute("SELECT args FROM pcq_jobs").fetchall()
    assert sorted((r[0]["thread"], r[0]["i"]) for r in rows) == [
        (t, i) for t in range(8) for i in range(25)
    ]


def test_an_engine_with_another_driver_is_refused_with_the_fix(db_params):
    engine = sqlalchemy.create_engine(
        url_of(db_params).replace("postgresql://", "postgresql+psycopg://", 1)
    )
    try:
        with pytest.raises(exceptions.ConfigurationError, match="postgresql\\+psycopg2://"):
            pc.App(connector=SQLAlchemyPsycopg2Connector()).open(engine)
        with pytest.raises(exceptions.ConfigurationError, match="expects a sqlalchemy Engine"):
            pc.App(connector=SQLAlchemyPsycopg2Connector()).open("not an engine")
    finally:
        engine.dispose()


def test_defer_inside_a_session_transaction(db_params, db_conn):
    """The ORM way: defer on the session's connection; rollback takes the job with it."""
    from sqlalchemy.orm import Session

    engine = sqlalchemy.create_engine(
        url_of(db_params).replace("postgresql://", "postgresql+psycopg2://", 1)
    )
    app = pc.App(connector=SQLAlchemyPsycopg2Connector())
    try:
        app.open(engine)
        for commit in (False, True):
            with Session(engine) as session:
                job = app.configure_task("t").make_new_job(commit=commit)
                app.job_manager.defer_job(job, connection=session.connection())
                session.commit() if commit else session.rollback()
        app.close()
    finally:
        engine.dispose()
    assert db_conn.execute("SELECT args FROM pcq_jobs").fetchall() == [({"commit": True},)]
