"""`worker` flags: generated from WorkerOptions, and every bad value refused before connecting."""

from __future__ import annotations

import dataclasses

import pytest

import procrastinate_core as pc
from procrastinate_core.cli import build_parser, main
from procrastinate_core.cli.worker_flags import worker_options_from
from procrastinate_core.options import WorkerOptions


def parse(*argv):
    return worker_options_from(build_parser(with_app_option=False).parse_args(["worker", *argv]))


def test_every_worker_option_has_a_flag_with_its_default_in_the_help():
    parser = build_parser()
    worker = parser.commands["worker"]
    dests = {option.action.dest for option in parser.options if option.parser is worker}
    help_text = " ".join(worker.format_help().split())
    for field in dataclasses.fields(WorkerOptions):
        assert f"worker_option:{field.name}" in dests, field.name
        default = field.default.value if hasattr(field.default, "value") else field.default
        assert f"(default: {default!r})" in help_text, field.name
    assert "How many jobs run at once in this process. (default: 1)" in help_text


def test_only_given_flags_are_passed():
    assert parse() == {}
    assert parse(
        "-q", "mail, reports", "--name", "w1", "-c", "4", "--one-shot",
        "--fetch-job-polling-interval", "0.5", "--abort-job-polling-interval", "2",
        "--shutdown-graceful-timeout", "10", "--no-listen-notify", "--delete-jobs", "successful",
        "--additional-context", '{"region": "eu"}', "--no-signal-handlers",
        "--update-heartbeat-interval", "1", "--stalled-worker-timeout", "5",
        "--worker-middleware", "json.dumps",
    ) == {
        "queues": ("mail", "reports"),
        "name": "w1",
        "concurrency": 4,
        "wait": False,
        "fetch_job_polling_interval": 0.5,
        "abort_job_polling_interval": 2.0,
        "shutdown_graceful_timeout": 10.0,
        "listen_notify": False,
        "delete_jobs": "successful",
        "additional_context": {"region": "eu"},
        "install_signal_handlers": False,
        "update_heartbeat_interval": 1.0,
        "stalled_worker_timeout": 5.0,
        "worker_middleware": [__import__("json").dumps],
    }  # fmt: skip
    assert parse("--wait", "--listen-notify", "--shutdown-graceful-timeout", "none") == {
        "wait": True,
        "listen_notify": True,
        "shutdown_graceful_timeout": None,
    }


@pytest.fixture
def run(capsys, db_dsn):
    app = pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn))

    def run(*argv, app=app):
        code = main(["worker", *argv], app=app)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["-q", "a,,b"],
            "argument -q/--queues: 'a,,b': expected comma-separated queue names, e.g. "
            "'emails,reports'",
        ),
        (["-c", "many"], "argument -c/--concurrency: invalid int value: 'many'"),
        (["--delete-jobs", "sometimes"], "argument --delete-jobs: invalid choice: 'sometimes'"),
        (
            ["--additional-context", "[1]"],
            "argument --additional-context: '[1]': expected a JSON object "
            'such as \'{"key": "value"}\'',
        ),
        (
            ["--worker-middleware", "nowhere.at_all"],
            "argument --worker-middleware: cannot import 'nowhere.at_all' "
            "(ModuleNotFoundError: No module named 'nowhere'); expected "
            "'package.module.callable'",
        ),
    ],
)
def test_usage_errors(run, argv, message):
    code, _, err = run(*argv)
    assert code == 2 and message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-c", "0"], "Error: concurrency=0: expected an int >= 1"),
        (
            ["--fetch-job-polling-interval", "0"],
            "Error: fetch_job_polling_interval=0.0: expected a number of seconds > 0",
        ),
        (
            ["--update-heartbeat-interval", "30", "--stalled-worker-timeout", "10"],
            "Error: stalled_worker_timeout=10.0 must be larger than update_heartbeat_interval=30.0",
        ),
    ],
)
def test_bad_values_fail_before_connecting(capsys, argv, message):
    dead = pc.App(connector=pc.PsycopgConnector(conninfo="host=127.0.0.1 port=1"))
    assert main(["worker", *argv], app=dead) == 1
    assert capsys.readouterr().err.startswith(message)


def test_import_paths_failure_names_the_module(run, db_dsn):
    broken = pc.App(
        connector=pc.PsycopgConnector(conninfo=db_dsn), import_paths=["tests.no_such_tasks"]
    )
    code, _, err = run("--one-shot", app=broken)
    assert code == 1
    assert err.startswith(
        "Error: cannot import task module 'tests.no_such_tasks' (listed in import_paths): "
        "ModuleNotFoundError: No module named 'tests.no_such_tasks'"
    )


def test_sync_connector_cannot_run_a_worker(run, db_dsn):
    app = pc.App(connector=pc.SyncPsycopgConnector(conninfo=db_dsn))
    code, _, err = run("--one-shot", app=app)
    assert code == 1
    assert err.startswith("Error: SyncPsycopgConnector cannot run a worker: it is a sync connector")


def test_one_shot_worker_runs_what_is_ready_and_returns(capsys, db_dsn, db_conn):
    from tests.acceptance import cli_app

    app = cli_app.app.with_connector(pc.PsycopgConnector(conninfo=db_dsn, min_size=1))
    for argv in (
        ["tests.acceptance.cli_app.add", '{"a": 2, "b": 3}'],
        ["tests.acceptance.cli_app.echo", '{"text": "hi"}'],
    ):
        assert main(["defer", *argv], app=app) == 0
    assert main(["worker", "--one-shot", "--no-signal-handlers", "-q", "maths"], app=app) == 0
    rows = db_conn.execute("SELECT task_name, status, result FROM pcq_jobs ORDER BY id").fetchall()
    assert rows == [
        ("tests.acceptance.cli_app.add", "succeeded", 5),
        ("tests.acceptance.cli_app.echo", "todo", None),
    ]
    assert main(["worker", "--one-shot", "--no-signal-handlers", "-c", "2"], app=app) == 0
    assert db_conn.execute(
        "SELECT status, result FROM pcq_jobs ORDER BY id DESC LIMIT 1"
    ).fetchone() == ("succeeded", "hi")
    assert db_conn.execute("SELECT count(*) FROM pcq_workers").fetchone() == (0,)


def test_unreachable_database_fails_with_the_reason(capsys):
    dead = pc.App(connector=pc.PsycopgConnector(conninfo="host=127.0.0.1 port=1 dbname=gone"))
    assert main(["worker", "--one-shot", "--no-signal-handlers"], app=dead) == 1
    assert capsys.readouterr().err.startswith(
        "Error: cannot talk to PostgreSQL (host=127.0.0.1 port=1 dbname=gone)"
    )
