"""The test harness's own promises: each test sees an empty database with the template's schema.

`db_name` is one database per test process, emptied after every test
(tests/support/worker_database.py); these tests dirty it in the ways other tests do
and check what the next test would see.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.support.worker_database import WorkerDatabase, catalog, fingerprint


@pytest.fixture
def database(worker_database: WorkerDatabase) -> WorkerDatabase:
    worker_database.reset()  # whatever the previous test left
    return worker_database


def connect(database: WorkerDatabase) -> psycopg.Connection:
    return psycopg.connect(database.server.conninfo(database.name), autocommit=True)


def test_rows_are_emptied_and_ids_start_again(database):
    with connect(database) as conn:
        conn.execute("INSERT INTO pcq_jobs (queue_name, task_name, args) VALUES ('q', 't', '{}')")
        conn.execute("INSERT INTO pcq_workers (name) VALUES ('w')")
    recreated = database.recreated
    database.reset()
    assert database.recreated == recreated  # emptied in place
    with connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM pcq_events").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pcq_workers").fetchone() == (0,)
        [job_id] = conn.execute(
            "INSERT INTO pcq_jobs (queue_name, task_name, args) VALUES ('q', 't', '{}') "
            "RETURNING id"
        ).fetchone()
        assert job_id == 1
        # The schema's record of its migrations survives.
        assert conn.execute("SELECT count(*) FROM pcq_migrations").fetchone()[0] > 0
    database.reset()


def test_tables_a_test_added_are_dropped_in_place(database):
    with connect(database) as conn:
        conn.execute(
            "CREATE TABLE ledger (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, job bigint)"
        )
        conn.execute("CREATE INDEX ON ledger (job)")
    recreated = database.recreated
    database.reset()
    assert database.recreated == recreated
    with connect(database) as conn:
        assert conn.execute("SELECT to_regclass('ledger')").fetchone() == (None,)
        assert catalog(conn) == database.pristine


@pytest.mark.parametrize(
    "change",
    [
        "DROP TRIGGER pcq_jobs_inserted ON pcq_jobs",
        "ALTER TABLE pcq_jobs DISABLE TRIGGER pcq_jobs_updated",
        "ALTER TABLE pcq_jobs ADD COLUMN extra int",
        "CREATE FUNCTION added() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "DELETE FROM pcq_migrations",
        "DROP TABLE pcq_periodic_defers",
        "CREATE VIEW v AS SELECT 1 AS one",
        # Same name and signature, another body: only the row's new version tells.
        "CREATE OR REPLACE FUNCTION pcq_forget_truncated_jobs() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
        "ALTER TABLE pcq_jobs ALTER COLUMN queue_name SET DEFAULT 'other'",
        "DROP INDEX pcq_jobs_unfinished_idx",
    ],
)
def test_any_other_change_gets_a_fresh_clone(database, change):
    with connect(database) as conn:
        conn.execute(change)
    recreated = database.recreated
    database.reset()
    assert database.recreated == recreated + 1
    with connect(database) as conn:
        assert catalog(conn) == database.pristine


def test_a_reset_after_rows_only_reads_no_catalog(database):
    """The common case stays cheap: an unchanged fingerprint, no comparison of the catalog."""
    database.reset()  # the state is now known to be pristine
    checks, recreated = database.full_checks, database.recreated
    for _ in range(3):
        with connect(database) as conn:
            conn.execute(
                "INSERT INTO pcq_jobs (queue_name, task_name, args) VALUES ('q', 't', '{}')"
            )
        database.reset()
    assert (database.full_checks, database.recreated) == (checks, recreated)
    with connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (0,)


def test_temporary_tables_of_ended_sessions_leave_the_fingerprint_as_it_was(database):
    with connect(database) as conn:
        before = fingerprint(conn)
        with connect(database) as other:
            other.execute("CREATE TEMP TABLE scratch (id int PRIMARY KEY, note text DEFAULT 'x')")
            assert fingerprint(conn) == before  # another session's temporary objects
        assert fingerprint(conn) == before


def test_connections_a_test_left_open_do_not_block_the_reset(database):
    leftover = connect(database)
    leftover.autocommit = False
    leftover.execute(
        "LOCK TABLE pcq_jobs IN ACCESS EXCLUSIVE MODE"
    )  # an open transaction holding a lock
    recreated = database.recreated
    database.reset()
    assert database.recreated == recreated
    assert leftover.closed or leftover.broken or _dead(leftover)
    leftover.close()


def _dead(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_db_name_is_the_workers_database(db_name, worker_database, db_conn):
    assert db_name == worker_database.name
    assert db_conn.execute("SELECT count(*) FROM pcq_jobs").fetchone() == (0,)


def test_own_db_name_is_a_database_of_the_tests_own_with_the_schema(
    own_db_name, worker_database, pg_server
):
    assert own_db_name != worker_database.name
    with psycopg.connect(pg_server.conninfo(own_db_name), autocommit=True) as conn:
        assert catalog(conn) == worker_database.pristine
