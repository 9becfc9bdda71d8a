"""`healthchecks`: database, schema and worker heartbeats, each printed; exit 1 when one fails."""

from __future__ import annotations

import pytest

import procrastinate_core as pc
from procrastinate_core.cli import main


@pytest.fixture
def check(capsys):
    def check(app, *argv):
        code = main(["healthchecks", *argv], app=app)
        out, err = capsys.readouterr()
        return code, out.splitlines(), err

    return check


@pytest.fixture
def app(db_dsn):
    return pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn, min_size=1))


def test_all_good_without_workers(app, check):
    code, lines, err = check(app)
    assert (code, err) == (0, "")
    assert lines[0] == "database: OK - PostgreSQL answers"
    assert lines[1].startswith("schema: OK - schema is current (version ")
    assert lines[2] == "workers: OK - 0 live, 0 stalled (stalled_worker_timeout=30s)"


def test_min_workers(app, check):
    code, lines, _ = check(app, "--min-workers", "1")
    assert code == 1
    assert lines[-1] == (
        "workers: FAIL - 0 live, 0 stalled (stalled_worker_timeout=30s); --min-workers=1"
    )


def test_live_and_stalled_workers(app, check, db_conn):
    with app.open():
        live = app.job_manager.register_worker(name="alive", host="box", pid=1)
        dead = app.job_manager.register_worker(name="dead", host="box", pid=2)
    code, lines, _ = check(app, "--min-workers", "2")
    assert code == 0
    assert lines[2].startswith(f"worker {live} (alive, box, pid 1): OK - last heartbeat ")
    assert lines[-1] == "workers: OK - 2 live, 0 stalled (stalled_worker_timeout=30s)"
    db_conn.execute(
        "UPDATE pcq_workers SET last_heartbeat = now() - interval '1 hour' WHERE id = %s", (dead,)
    )
    code, lines, _ = check(app)
    assert code == 1
    assert lines[3].startswith(f"worker {dead} (dead, box, pid 2): FAIL - last heartbeat 36")
    assert lines[3].endswith("s ago, over stalled_worker_timeout=30s: stalled")
    assert lines[-1] == "workers: FAIL - 1 live, 1 stalled (stalled_worker_timeout=30s)"


def test_stalled_timeout_comes_from_the_app(db_dsn, check):
    app = pc.App(
        connector=pc.PsycopgConnector(conninfo=db_dsn),
        worker_defaults={"stalled_worker_timeout": 7200},
    )
    code, lines, _ = check(app)
    assert code == 0 and lines[-1].endswith("(stalled_worker_timeout=7200s)")


def test_schema_missing(pg_server, empty_db_name, check):
    app = pc.App(connector=pc.PsycopgConnector(conninfo=pg_server.conninfo(empty_db_name)))
    code, lines, _ = check(app)
    assert code == 1
    assert lines == [
        "database: OK - PostgreSQL answers",
        "schema: FAIL - schema is not installed; apply it with `schema --apply` "
        "(or `manage.py migrate` with Django)",
    ]


def test_database_unreachable(check):
    app = pc.App(connector=pc.PsycopgConnector(conninfo="host=127.0.0.1 port=1 dbname=gone"))
    code, lines, err = check(app)
    assert (code, err) == (1, "")
    assert len(lines) == 1
    assert lines[0].startswith(
        "database: FAIL - cannot talk to PostgreSQL (host=127.0.0.1 port=1 dbname=gone)"
    )


def test_min_workers_must_be_a_count(app, check):
    code, lines, err = check(app, "--min-workers", "-2")
    assert (code, lines) == (2, [])
    assert "argument --min-workers: -2: expected a number >= 0" in err
