"""Applying, checking, and upgrading the schema; the schema equals the sum of the migrations."""

import threading

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions, sql
from procrastinate_core.schema import read_schema
from tests.support.waiting import wait_until


@pytest.fixture
def empty_app(pg_server, empty_db_name):
    app = pc.App(
        connector=pc.SyncPsycopgConnector(conninfo=pg_server.conninfo(empty_db_name), min_size=1)
    )
    with app.open():
        yield app


def latest():
    return sql.migrations()[-1].version


def test_apply_on_empty_database_then_again(empty_app):
    status = empty_app.schema_manager.get_status()
    assert status.applied == () and not status.is_current
    assert "not installed" in status.describe()
    with pytest.raises(exceptions.SchemaError, match="schema --apply"):
        empty_app.schema_manager.check()
    assert empty_app.schema_manager.apply_schema() == list(range(1, latest() + 1))
    assert empty_app.schema_manager.apply_schema() == []  # harmless to repeat
    assert empty_app.schema_manager.check().is_current


async def test_apply_async(pg_server, empty_db_name):
    app = pc.App(
        connector=pc.PsycopgConnector(conninfo=pg_server.conninfo(empty_db_name), min_size=1)
    )
    async with app.open_async():
        assert await app.schema_manager.apply_schema_async() == list(range(1, latest() + 1))
        assert (await app.schema_manager.check_async()).is_current


def test_upgrade_applies_only_missing_migrations(empty_app, pg_server, empty_db_name):
    first = sql.migrations()[0]
    with psycopg.connect(pg_server.conninfo(empty_db_name), autocommit=True) as conn:
        conn.execute(first.sql)
        conn.execute("INSERT INTO pcq_jobs (queue_name, task_name) VALUES ('q', 'old')")
    status = empty_app.schema_manager.get_status()
    assert status.applied == (1,) and status.missing == tuple(range(2, latest() + 1))
    assert "missing migrations" in status.describe()
    assert empty_app.schema_manager.apply_schema() == list(range(2, latest() + 1))
    # Data written under the old schema is still there and readable.
    [job] = empty_app.job_manager.list_jobs()
    assert job.task_name == "old" and job.result is None


def test_concurrent_appliers_both_succeed(pg_server, empty_db_name):
    errors, results = [], []

    def apply():
        app = pc.App(
            connector=pc.SyncPsycopgConnector(
                conninfo=pg_server.conninfo(empty_db_name), min_size=1
            )
        )
        try:
            with app.open():
                results.append(app.schema_manager.apply_schema())
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=apply) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = sorted(v for r in results for v in r)
    assert applied == list(range(1, latest() + 1))


def test_an_applier_waits_for_the_one_migrating_and_then_skips_what_it_applied(
    pg_server, empty_db_name
):
    """Appliers take turns (sql/migration_lock.sql); the test above only finds a lost race.

    Without turns, two appliers could run one migration at once, deadlock on
    its DDL, and the loser raised SchemaError before the winner had committed.
    Here a session holds the turn with migration 0001 applied but uncommitted:
    the applier must wait for it (on the advisory lock, before any DDL), then
    apply everything after 0001, counting 0001 as the other's.
    """
    dsn = pg_server.conninfo(empty_db_name)
    holder = psycopg.connect(dsn)  # a transaction, like an applier's migration
    holder.execute(sql.migration_lock() + sql.migrations()[0].sql)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def apply() -> None:
        app = pc.App(connector=pc.SyncPsycopgConnector(conninfo=dsn, min_size=1))
        try:
            with app.open():
                results.append(app.schema_manager.apply_schema())
        except Exception as exc:  # asserted below
            errors.append(exc)

    applier = threading.Thread(target=apply)
    applier.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as watcher:
            wait_until(
                lambda: (
                    watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                    ).fetchone()
                    == (1,)
                ),
                what="the applier waiting for its turn",
            )
    finally:
        holder.commit()
        holder.close()
        applier.join(timeout=60)
    assert errors == []
    assert results == [list(range(2, latest() + 1))]


def _catalog(conn):
    return {
        "columns": conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2"
        ).fetchall(),
        "indexes": conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall(),
        "functions": conn.execute(
            "SELECT proname, prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE nspname = 'public' ORDER BY 1"
        ).fetchall(),
        "triggers": conn.execute(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1"
        ).fetchall(),
    }


def test_read_schema_equals_sum_of_migrations(pg_server, db_conn, empty_db_name):
    """The schema a fresh database gets (read_schema) equals applying the migrations one by one."""
    with psycopg.connect(pg_server.conninfo(empty_db_name), autocommit=True) as conn:
        for migration in sql.migrations():
            conn.execute(migration.sql)
        stepwise = _catalog(conn)
    assert _catalog(db_conn) == stepwise  # db_conn's database was built from read_schema()
    assert read_schema().count("INSERT INTO pcq_migrations") == latest()


def test_check_connection(app):
    assert app.job_manager.check_connection() is True


async def test_check_connection_on_the_app(app, async_app):
    """procrastinate's App.check_connection[_async], on a real database with the schema."""
    assert app.check_connection() is True
    assert await async_app.check_connection_async() is True
