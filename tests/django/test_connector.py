"""The Django connector: queries through Django's connection, errors translated, rows as dicts."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from procrastinate_core import PsycopgConnector, exceptions
from procrastinate_core.contrib.psycopg2 import Psycopg2Connector
from procrastinate_django import DjangoConnector, connector_params
from procrastinate_django.connector import build_connector
from procrastinate_django.testing import deferred_jobs, run_deferred_jobs
from tests.django.testapp.tasks import record

pytestmark = pytest.mark.django_db


def test_rows_come_back_as_dicts() -> None:
    connector = DjangoConnector()
    row = connector.execute_query_one("schema_is_installed")
    assert row == {"installed": True}
    rows = connector.execute_query_all("schema_versions_applied")
    assert [r["version"] for r in rows] == sorted(r["version"] for r in rows)
    assert rows and set(rows[0]) >= {"version"}


def test_unique_violation_is_translated_and_transaction_stays_usable(pcq_app) -> None:
    from tests.django.testapp.tasks import record

    deferrer = record.configure(queueing_lock="only-one")
    with transaction.atomic():
        deferrer.defer(value="a")
        with pytest.raises(exceptions.AlreadyEnqueued, match="queueing lock"):
            deferrer.defer(value="b")
        # the database answered the conflict with a row, not an error: the outer
        # transaction goes on
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pcq_jobs")
            assert cursor.fetchone()[0] == 1


def test_a_defer_inside_atomic_is_one_statement_with_no_savepoint(pcq_app) -> None:
    """A defer from a view costs one round trip: no SAVEPOINT / RELEASE around it."""
    from django.test.utils import CaptureQueriesContext

    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        record.defer(value="a")
        record.configure(queueing_lock="one").defer(value="b")
        with pytest.raises(exceptions.AlreadyEnqueued):
            record.configure(queueing_lock="one").defer(value="c")
    statements = [q["sql"] for q in queries.captured_queries]
    assert not [s for s in statements if "SAVEPOINT" in s.upper()], statements
    assert len(statements) == 3, statements


def test_connector_params_follow_django_settings() -> None:
    params = connector_params()
    settings_dict = connection.settings_dict
    assert params["dbname"] == settings_dict["NAME"]  # the test database
    for key, setting in (("host", "HOST"), ("port", "PORT"), ("user", "USER")):
        if settings_dict[setting]:
            assert str(params[key]) == str(settings_dict[setting])
    assert "client_encoding" in params  # Django's own choice passes through
    assert not {"cursor_factory", "context", "prepare_threshold"} & set(params)


def test_connector_params_keep_libpq_options_and_drop_django_ones() -> None:
    options = connection.settings_dict["OPTIONS"]
    saved = dict(options)
    options.update(
        {
            "sslmode": "disable",
            "passfile": "/nonexistent/pgpass",
            "isolation_level": 1,
            "server_side_binding": False,
        }
    )
    try:
        params = connector_params()
    finally:
        options.clear()
        options.update(saved)
    assert params["sslmode"] == "disable"
    assert params["passfile"] == "/nonexistent/pgpass"
    assert "isolation_level" not in params and "server_side_binding" not in params


def test_non_postgresql_alias_is_rejected() -> None:
    from django.db import connections

    connections.settings["other"] = connections.configure_settings(
        {
            "default": dict(connections.settings["default"]),
            "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        }
    )["other"]
    try:
        with pytest.raises(
            exceptions.ConfigurationError, match=r"DATABASES\['other'\].*needs PostgreSQL"
        ):
            connector_params("other")
    finally:
        del connections.settings["other"]
        del connections["other"]


def test_unknown_backend_names_the_setting() -> None:
    with pytest.raises(exceptions.ConfigurationError, match="PROCRASTINATE_CONNECTOR='mysql'"):
        build_connector("default", "mysql")


@pytest.mark.parametrize(
    ("backend", "class_name"),
    [
        ("psycopg", "PsycopgConnector"),
        ("aiopg", "AiopgConnector"),
        ("psycopg2", "Psycopg2Connector"),
        ("sqlalchemy", "SQLAlchemyPsycopg2Connector"),
    ],
)
def test_every_backend_reaches_the_test_database(live_db, backend: str, class_name: str) -> None:
    from procrastinate_core.schema import SchemaManager

    connector = build_connector("default", backend)
    assert type(connector).__name__ == class_name
    sync = connector.get_sync_connector()
    sync.open()
    try:
        status = SchemaManager(sync).get_status()
    finally:
        sync.close()
    assert status.is_current


def test_execute_script_runs_in_one_transaction() -> None:
    connector = DjangoConnector()
    with pytest.raises(exceptions.ConnectorException):
        connector.execute_script("CREATE TABLE pcq_tmp_script (x int); SELECT 1/0;")
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('pcq_tmp_script') IS NULL")
        assert cursor.fetchone()[0] is True


def test_open_refuses_a_pool() -> None:
    with pytest.raises(exceptions.ConfigurationError, match="DATABASES"):
        DjangoConnector().open(pool=object())


def test_run_deferred_jobs_inside_a_transaction_says_why_it_cannot() -> None:
    record.defer(value="in test transaction")
    assert [job.task_kwargs for job in deferred_jobs(record)] == [{"value": "in test transaction"}]
    with pytest.raises(exceptions.ConfigurationError, match="transaction=True"):
        run_deferred_jobs()


def test_pooler_and_listen_dsn_settings_reach_the_worker_connector() -> None:
    """PROCRASTINATE_POOLER / PROCRASTINATE_LISTEN_DSN (docs/pgbouncer.md): the worker's connector
    prepares nothing and listens on the direct address, whose dbname stays
    Django's (the test one)."""
    from django.test import override_settings

    with override_settings(
        PROCRASTINATE_POOLER="transaction", PROCRASTINATE_LISTEN_DSN="host=db-direct port=5433"
    ):
        worker_connector = DjangoConnector().get_worker_connector()
        assert isinstance(worker_connector, PsycopgConnector)  # PROCRASTINATE_CONNECTOR's default
        settings = worker_connector._settings
        assert settings.connection_kwargs()["prepare_threshold"] is None
        assert settings.listener_kwargs()["host"] == "db-direct"
        assert f"dbname={connection.settings_dict['NAME']}" in worker_connector.wake_up_mode
        assert "host=db-direct port=5433" in worker_connector.wake_up_mode
        sync = build_connector("default", "psycopg2")  # sync: no listener, the pooler only
        assert isinstance(sync, Psycopg2Connector)
        assert sync._settings.pooler == "transaction" and sync._settings.listen_dsn is None
    with override_settings(PROCRASTINATE_POOLER="transaction"):
        polling = DjangoConnector().get_worker_connector()
        assert isinstance(polling, PsycopgConnector) and "polling every 1 s" in polling.wake_up_mode
    listening = DjangoConnector().get_worker_connector()
    assert isinstance(listening, PsycopgConnector) and listening.wake_up_mode == "LISTEN"
