"""Options from environment variables (PROCRASTINATE_<OPTION>, PROCRASTINATE_<COMMAND>_<OPTION>)."""

from __future__ import annotations

import json

import pytest

import procrastinate_core as pc
from procrastinate_core.cli import build_parser, environment, main
from procrastinate_core.cli.worker_flags import worker_options_from


def parse(environ: dict[str, str], *argv: str):
    parser = build_parser()
    problems = environment.apply(parser, environ)
    return parser.parse_args(list(argv)), problems


def test_worker_options_come_from_the_environment():
    args, problems = parse(
        {
            "PROCRASTINATE_WORKER_CONCURRENCY": "3",
            "PROCRASTINATE_WORKER_WAIT": "false",
            "PROCRASTINATE_WORKER_QUEUES": "mail,reports",
            "PROCRASTINATE_WORKER_DELETE_JOBS": "successful",
            "PROCRASTINATE_WORKER_SHUTDOWN_GRACEFUL_TIMEOUT": "none",
            "PROCRASTINATE_WORKER_ADDITIONAL_CONTEXT": '{"region": "eu"}',
            "PROCRASTINATE_WORKER_WORKER_MIDDLEWARE": "json.dumps, json.loads",
            "PROCRASTINATE_WORKER_LISTEN_NOTIFY": "off",
        },
        "worker",
    )
    assert problems["worker"] == []
    assert worker_options_from(args) == {
        "concurrency": 3,
        "wait": False,
        "queues": ("mail", "reports"),
        "delete_jobs": "successful",
        "shutdown_graceful_timeout": None,
        "additional_context": {"region": "eu"},
        "worker_middleware": [json.dumps, json.loads],
        "listen_notify": False,
    }


def test_a_flag_wins_over_its_variable():
    environ = {
        "PROCRASTINATE_WORKER_CONCURRENCY": "3",
        "PROCRASTINATE_WORKER_WAIT": "no",
        "PROCRASTINATE_WORKER_WORKER_MIDDLEWARE": "json.dumps",
    }
    args, _ = parse(environ, "worker", "-c", "5", "--wait", "--worker-middleware", "json.loads")
    assert worker_options_from(args) == {
        "concurrency": 5,
        "wait": True,
        "worker_middleware": [json.loads],  # replaced, not extended
    }
    args, _ = parse(
        environ, "worker", "--worker-middleware", "json.loads", "--worker-middleware", "json.dumps"
    )
    assert worker_options_from(args)["worker_middleware"] == [json.loads, json.dumps]


def test_unset_variables_pass_nothing():
    args, problems = parse({}, "worker")
    assert worker_options_from(args) == {} and not any(problems.values())


def test_global_and_other_commands_options():
    environ = {
        "PROCRASTINATE_APP": "tests.acceptance.cli_app.app",
        "PROCRASTINATE_VERBOSE": "2",
        "PROCRASTINATE_LOG_FORMAT": "json",
        "PROCRASTINATE_DEFER_UNKNOWN": "yes",
        "PROCRASTINATE_DEFER_IGNORE_ALREADY_ENQUEUED": "1",
        "PROCRASTINATE_DEFER_QUEUE": "reports",
        "PROCRASTINATE_DEFER_IN": "30",
        "PROCRASTINATE_HEALTHCHECKS_MIN_WORKERS": "2",
    }
    args, _ = parse(environ, "defer", "some.task")
    assert (args.app, args.verbose, args.log_format) == ("tests.acceptance.cli_app.app", 2, "json")
    assert args.unknown is True and args.ignore_already_enqueued is True
    assert (args.queue, args.in_seconds) == ("reports", 30.0)
    args, _ = parse(environ, "healthchecks")
    assert args.min_workers == 2
    args, _ = parse(environ, "-v", "healthchecks")  # -v counts up from the variable
    assert args.verbose == 3


def test_every_option_names_its_variable_in_the_help():
    parser = build_parser()
    environment.apply(parser, {})
    # argparse keeps its subparsers private: typeshed types the action as an iterable
    worker = parser._subparsers._group_actions[0].choices["worker"]  # type: ignore[index]
    text = " ".join(worker.format_help().split())
    assert "[env: PROCRASTINATE_WORKER_CONCURRENCY]" in text
    assert "[env: PROCRASTINATE_WORKER_STALLED_WORKER_TIMEOUT]" in text
    assert "[env: PROCRASTINATE_APP]" in " ".join(parser.format_help().split())


DEAD = "host=127.0.0.1 port=1"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PROCRASTINATE_WORKER_CONCURRENCY", "many", "invalid literal for int()"),
        ("PROCRASTINATE_WORKER_WAIT", "maybe", "expected one of 1, true, yes, on, 0, false"),
        (
            "PROCRASTINATE_WORKER_DELETE_JOBS",
            "sometimes",
            "expected one of never, successful, always",
        ),
        ("PROCRASTINATE_WORKER_QUEUES", "a,,b", "expected comma-separated queue names"),
        ("PROCRASTINATE_VERBOSE", "-1", "expected a count of 0 or more"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_variable(
    monkeypatch, capsys, name, value, message
):
    monkeypatch.setenv(name, value)
    assert main(["worker"], app=pc.App(connector=pc.PsycopgConnector(conninfo=DEAD))) == 2
    err = capsys.readouterr().err
    assert f"environment variable {name}={value!r}: " in err and message in err


def test_a_bad_worker_variable_does_not_break_other_commands(monkeypatch, capsys):
    monkeypatch.setenv("PROCRASTINATE_WORKER_CONCURRENCY", "many")
    assert main(["schema", "--read"], app=None) == 0
    assert "CREATE TABLE pcq_jobs" in capsys.readouterr().out


def test_variables_reach_the_worker_and_win_over_worker_defaults(monkeypatch, capsys):
    """Checked like flags: concurrency 0 is refused by the worker's own validation (the
    app's default of 4 would have been accepted, and the worker would have tried to connect)."""
    monkeypatch.setenv("PROCRASTINATE_WORKER_CONCURRENCY", "0")
    dead = pc.App(connector=pc.PsycopgConnector(conninfo=DEAD), worker_defaults={"concurrency": 4})
    assert main(["worker"], app=dead) == 1
    assert capsys.readouterr().err.startswith(
        "Error: environment variable PROCRASTINATE_WORKER_CONCURRENCY='0': concurrency=0: "
        "expected an int >= 1"
    )
