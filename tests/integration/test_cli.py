"""The CLI run in-process through main(argv): global options, app loading, defer, schema.

Each test runs the real parser and command against a fresh database and checks
the exit code and what was printed (and, for defer, what was written).
"""

from __future__ import annotations

import datetime
import sys

import pytest

import procrastinate_core as pc
from procrastinate_core.cli import build_parser, main
from procrastinate_core.schema import read_schema
from tests.acceptance import cli_app

APP_PATH = "tests.acceptance.cli_app.app"


@pytest.fixture
def app(db_dsn):
    """The CLI test app (its tasks) on this test's database."""
    return cli_app.app.with_connector(pc.PsycopgConnector(conninfo=db_dsn, min_size=1, max_size=2))


@pytest.fixture
def run(capsys, app):
    def run(*argv, app=app, **kwargs):
        code = main(list(argv), app=app, **kwargs)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def app_module_env(monkeypatch, db_dsn):
    """`--app tests.acceptance.cli_app.app` imports the module afresh, pointed at this database."""
    monkeypatch.setenv(cli_app.DSN_ENV_VAR, db_dsn)
    monkeypatch.delenv("PROCRASTINATE_APP", raising=False)
    monkeypatch.delitem(sys.modules, "tests.acceptance.cli_app")


def jobs(db_conn):
    return db_conn.execute(
        "SELECT id, task_name, queue_name, priority, lock, queueing_lock, args, "
        "scheduled_at, status "
        "FROM pcq_jobs ORDER BY id"
    ).fetchall()


# -- global options and app loading ------------------------------------------------
def test_version(run):
    code, out, _ = run("--version", prog="procrastinate-core")
    assert code == 0
    assert out.startswith("procrastinate-core ") and out.split()[1][0].isdigit()


def test_usage_error_names_prog_and_exits_2(run):
    code, _, err = run("frobnicate", prog="manage.py procrastinate")
    assert code == 2
    assert err.startswith("usage: manage.py procrastinate")
    assert "invalid choice: 'frobnicate'" in err


def test_no_command_is_a_usage_error(run):
    code, _, err = run()
    assert code == 2 and "the following arguments are required: COMMAND" in err


def test_given_app_means_no_app_option(run):
    code, _, err = run("schema", "--check", "--app", APP_PATH)
    assert code == 2 and "unrecognized arguments: --app" in err
    assert "--app" not in build_parser(with_app_option=False).format_help()


def test_missing_app_says_how_to_give_one(capsys, monkeypatch):
    monkeypatch.delenv("PROCRASTINATE_APP", raising=False)
    assert main(["schema", "--check"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "Error: no app given: pass --app=dotted.path.to.app (e.g. --app=myproject.tasks.app) "
        "or set PROCRASTINATE_APP"
    )


def test_unimportable_app_names_path_and_error(capsys):
    assert main(["--app", "no_such_package.tasks.app", "schema", "--check"]) == 1
    err = capsys.readouterr().err
    assert "cannot import module 'no_such_package.tasks' for app 'no_such_package.tasks.app'" in err
    assert "ModuleNotFoundError: No module named 'no_such_package'" in err


def test_app_path_to_something_else(capsys, app_module_env):
    assert main(["--app", "tests.acceptance.cli_app.add", "schema", "--check"]) == 1
    err = capsys.readouterr().err
    assert (
        "'tests.acceptance.cli_app.add': module 'tests.acceptance.cli_app' has no App named "
        "'add' (found Task)" in err
    )


def test_app_path_without_module(capsys):
    assert main(["--app", "app", "schema", "--check"]) == 1
    assert "'app' is not a dotted path to an App" in capsys.readouterr().err


def test_app_option_and_env_var(capsys, monkeypatch, app_module_env):
    assert main(["--app", APP_PATH, "schema", "--check"]) == 0
    assert "schema is current" in capsys.readouterr().out
    monkeypatch.setenv("PROCRASTINATE_APP", "tests.acceptance.cli_app:app")
    assert main(["-a", "", "schema", "--check"]) == 1  # an explicit empty --app wins
    assert "no app given" in capsys.readouterr().err
    assert main(["schema", "--check"]) == 0
    assert "schema is current" in capsys.readouterr().out


# -- schema ------------------------------------------------------------------------
def test_schema_read_needs_no_app_nor_database(capsys, monkeypatch):
    monkeypatch.delenv("PROCRASTINATE_APP", raising=False)
    assert main(["schema", "--read"]) == 0
    assert capsys.readouterr().out == read_schema() + "\n"


def test_schema_check_current(run):
    code, out, err = run("schema", "--check")
    assert (code, err) == (0, "")
    assert out.startswith("schema is current (version ")


@pytest.fixture
def empty_app(pg_server, empty_db_name):
    return cli_app.app.with_connector(
        pc.PsycopgConnector(conninfo=pg_server.conninfo(empty_db_name), min_size=1)
    )


def test_schema_check_apply_check_on_empty_database(run, empty_app):
    code, out, err = run("schema", "--check", app=empty_app)
    assert (code, out) == (1, "")
    assert err.strip() == (
        "Error: schema is not installed; apply it with `schema --apply` "
        "(or `manage.py migrate` with Django)"
    )
    code, out, _ = run("schema", "--apply", app=empty_app)
    assert code == 0 and out.startswith("Applied migrations [1, 2")
    assert run("schema", "--check", app=empty_app)[0] == 0
    code, out, _ = run("schema", app=empty_app)  # --apply is the default action
    assert code == 0 and out.startswith("Nothing to apply: schema is current")


def test_schema_check_on_older_database(run, empty_app, pg_server, empty_db_name):
    import psycopg

    from procrastinate_core import sql

    first, *rest = sql.migrations()
    with psycopg.connect(pg_server.conninfo(empty_db_name), autocommit=True) as conn:
        conn.execute(first.sql)
    code, _, err = run("schema", "--check", app=empty_app)
    assert code == 1
    missing = [m.version for m in rest]
    assert (
        f"schema is at version 1, the code expects {missing[-1]}; missing migrations {missing}"
        in err
    )
    code, out, _ = run("schema", "--apply", app=empty_app)
    assert code == 0 and out.startswith(f"Applied migrations {missing}")


def test_schema_on_unreachable_database(run):
    dead = cli_app.app.with_connector(
        pc.PsycopgConnector(conninfo="host=127.0.0.1 port=1 dbname=nothing connect_timeout=3")
    )
    code, out, err = run("schema", "--check", app=dead)
    assert (code, out) == (1, "")
    assert err.startswith("Error: cannot talk to PostgreSQL (host=127.0.0.1 port=1 dbname=nothing)")


def test_schema_actions_are_exclusive(run):
    code, _, err = run("schema", "--apply", "--check")
    assert code == 2 and "argument --check: not allowed with argument --apply" in err


# -- defer -------------------------------------------------------------------------
def test_defer_prints_the_job_id(run, db_conn):
    code, out, err = run("defer", "tests.acceptance.cli_app.add", '{"a": 1, "b": 2}')
    assert code == 0
    [row] = jobs(db_conn)
    assert out == f"{row[0]}\n"
    assert row[1:4] == ("tests.acceptance.cli_app.add", "maths", 0)  # the task's own queue
    assert row[6] == {"a": 1, "b": 2} and row[8] == "todo"
    assert f"Deferred tests.acceptance.cli_app.add[{row[0]}](a=1, b=2) on queue 'maths'" in err


def test_defer_without_kwargs(run, db_conn):
    code, out, _ = run("defer", "tests.acceptance.cli_app.echo")
    assert code == 0
    [row] = jobs(db_conn)
    assert row[6] == {} and row[2] == "default"


def test_defer_options(run, db_conn):
    code, _, _ = run(
        "defer", "tests.acceptance.cli_app.echo", '{"text": "hi"}',
        "--queue", "mail", "--priority", "-5", "--lock", "L", "--queueing-lock", "Q",
        "--at", "2030-01-01T09:00:00+01:00",
    )  # fmt: skip
    assert code == 0
    [row] = jobs(db_conn)
    assert row[2:6] == ("mail", -5, "L", "Q")
    assert row[7] == datetime.datetime(2030, 1, 1, 8, tzinfo=datetime.timezone.utc)


def test_defer_in_seconds(run, db_conn):
    before = datetime.datetime.now(datetime.timezone.utc)
    assert run("defer", "tests.acceptance.cli_app.echo", "--in", "90")[0] == 0
    after = datetime.datetime.now(datetime.timezone.utc)
    [row] = jobs(db_conn)
    assert (
        before + datetime.timedelta(seconds=90) <= row[7] <= after + datetime.timedelta(seconds=90)
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{nope"], "JSON_KWARGS '{nope' is not valid JSON (Expecting property name"),
        (["[1, 2]"], "JSON_KWARGS '[1, 2]' is a JSON list, not an object"),
        (
            ["--at", "tomorrow"],
            "--at 'tomorrow' is not an ISO 8601 date-time; use e.g. 2030-01-01T09:00:00+01:00",
        ),
        (
            ["--at", "2030-01-01T09:00"],
            "--at '2030-01-01T09:00' has no time zone; add one, e.g. 2030-01-01T09:00+00:00",
        ),
        (["--in", "-3"], "--in -3: expected a number of seconds >= 0"),
        (["--queue", "q" * 51], "is 51 bytes long; queue names are limited to 50 bytes"),
    ],
)
def test_defer_bad_input_writes_nothing(run, db_conn, argv, message):
    code, out, err = run("defer", "tests.acceptance.cli_app.echo", *argv)
    assert (code, out) == (1, "")
    assert err.startswith("Error: ") and message in err
    assert jobs(db_conn) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--priority", "high"], "argument --priority: invalid int value: 'high'"),
        (["--in", "soon"], "argument --in: invalid float value: 'soon'"),
        (
            ["--in", "3", "--at", "2030-01-01T00:00Z"],
            "argument --at: not allowed with argument --in",
        ),
    ],
)
def test_defer_usage_errors(run, db_conn, argv, message):
    code, _, err = run("defer", "tests.acceptance.cli_app.echo", *argv)
    assert code == 2 and message in err
    assert jobs(db_conn) == []


def test_defer_unknown_task(run, db_conn):
    code, out, err = run("defer", "shop.tasks.index", '{"page": 1}')
    assert (code, out) == (1, "")
    assert "Error: task 'shop.tasks.index' is not registered in this app (known tasks: " in err
    assert "tests.acceptance.cli_app.add" in err
    assert "Add its module to the app's import_paths, or pass --unknown to defer it anyway." in err
    assert jobs(db_conn) == []
    code, out, _ = run("defer", "--unknown", "shop.tasks.index", '{"page": 1}')
    assert code == 0
    [row] = jobs(db_conn)
    assert out == f"{row[0]}\n" and row[1] == "shop.tasks.index" and row[2] == "default"


def test_defer_queueing_lock_clash(run, db_conn):
    argv = ("defer", "tests.acceptance.cli_app.echo", "--queueing-lock", "once")
    assert run(*argv)[0] == 0
    code, out, err = run(*argv)
    assert (code, out) == (1, "")
    assert "Error: a job with this queueing lock is already waiting to run" in err
    code, out, err = run(*argv, "--ignore-already-enqueued")
    assert (code, out) == (0, "")
    assert err.startswith("Not deferred: a job with this queueing lock is already waiting")
    assert len(jobs(db_conn)) == 1


def test_defer_import_path_failure(run, db_conn, db_dsn):
    broken = pc.App(
        connector=pc.PsycopgConnector(conninfo=db_dsn), import_paths=["tests.no_such_module"]
    )
    code, _, err = run("defer", "--unknown", "x.y", app=broken)
    assert code == 1
    assert "Error: cannot import task module 'tests.no_such_module' (listed in import_paths)" in err
    assert jobs(db_conn) == []


@pytest.fixture
def late_package(tmp_path, monkeypatch, db_dsn):
    """A package whose App does not import its tasks module: `defer` must import it by name."""
    package = tmp_path / "lateapp"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os\nimport procrastinate_core as pc\n"
        "app = pc.App(connector=pc.PsycopgConnector(conninfo=os.environ['LATE_DSN']))\n"
    )
    (package / "tasks.py").write_text(
        "from lateapp import app\n\n@app.task\ndef ping():\n    pass\n"
    )
    (package / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.setenv("LATE_DSN", db_dsn)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lateapp.app"
    for name in ("lateapp", "lateapp.tasks", "lateapp.broken"):
        sys.modules.pop(name, None)


def test_defer_imports_the_tasks_module_named_by_the_task(capsys, db_conn, late_package):
    assert main(["--app", late_package, "defer", "lateapp.tasks.ping"]) == 0
    [row] = jobs(db_conn)
    assert capsys.readouterr().out == f"{row[0]}\n" and row[1] == "lateapp.tasks.ping"


def test_defer_reports_a_failing_tasks_module(capsys, db_conn, late_package):
    assert main(["--app", late_package, "defer", "lateapp.broken.ping"]) == 1
    assert capsys.readouterr().err == (
        "Error: cannot import module 'lateapp.broken' to find task 'lateapp.broken.ping': "
        "RuntimeError: boom at import. Fix the module, or pass --unknown to defer the job "
        "without it (with the default queue and priority unless given)\n"
    )
    assert main(["--app", late_package, "defer", "lateapp.missing.ping"]) == 1
    assert "task 'lateapp.missing.ping' is not registered in this app" in capsys.readouterr().err
    assert jobs(db_conn) == []
    assert main(["--app", late_package, "defer", "--unknown", "lateapp.broken.ping"]) == 0
    [row] = jobs(db_conn)
    assert (row[1], row[2]) == ("lateapp.broken.ping", "default")


# -- logging and argv --------------------------------------------------------------
def test_verbose_installs_a_structured_handler_and_removes_it(capsys, monkeypatch, empty_app):
    import logging

    monkeypatch.setattr(logging.root, "handlers", [])
    root_level = logging.root.level
    ours = logging.getLogger("procrastinate_core")
    our_level = ours.level
    assert main(["-v", "schema", "--apply"], app=empty_app) == 0
    err = capsys.readouterr().err
    assert (
        " INFO procrastinate_core.schema Applied migration 0001_initial "
        "action=apply_migration version=1" in err
    )
    assert logging.root.handlers == []
    assert (logging.root.level, ours.level) == (root_level, our_level)


def test_verbose_uses_existing_handlers(capsys, caplog, run, empty_app):
    import logging

    assert logging.root.handlers  # pytest's own capture handlers, like Django's LOGGING
    code, _, err = run("-vv", "schema", "--apply", app=empty_app)
    assert code == 0 and "Applied migration" not in err  # no handler of ours on stderr
    applied = [r for r in caplog.records if r.getMessage().startswith("Applied migration")]
    assert [r.levelname for r in applied][:1] == ["INFO"]
    assert applied[0].action == "apply_migration"


def test_main_reads_sys_argv(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["procrastinate-core", "schema", "--read"])
    assert main() == 0
    assert capsys.readouterr().out == read_schema() + "\n"
