"""Options from environment variables (PROCRASTINATE_<OPTION>, PROCRASTINATE_<COMMAND>_<OPTION>)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

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
    worker = parser.commands["worker"]
    text = " ".join(worker.format_help().split())
    assert "[env: PROCRASTINATE_WORKER_CONCURRENCY]" in text
    assert "[env: PROCRASTINATE_WORKER_STALLED_WORKER_TIMEOUT]" in text
    assert "[env: PROCRASTINATE_APP]" in " ".join(parser.format_help().split())


DEAD = "host=127.0.0.1 port=1"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PROCRASTINATE_WORKER_CONCURRENCY", "many", "invalid literal for int()"),
        (
            "PROCRASTINATE_WORKER_WAIT",
            "maybe",
            "expected a boolean: 1/true/yes/on/y/t or 0/false/no/off/n/f",
        ),
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


# -- Each option declares its variable where it is added (issue 15, deliverable 3) ---------
ROOT = Path(__file__).resolve().parents[2]
CLI_SOURCES = ROOT / "procrastinate_core" / "cli"


def _long_flags_in_help(parser: argparse.ArgumentParser) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", parser.format_help())) - {"--help"}


def test_every_option_of_the_cli_is_declared_with_add_option():
    """What --help shows is what was declared: no option bypasses the declarations."""
    parser = build_parser()
    declared = {flag for option in parser.options for flag in option.action.option_strings}
    for command in (parser, *parser.commands.values()):
        missing = _long_flags_in_help(command) - declared - {"--version"}
        assert missing == set(), f"{command.prog}: options added without add_option: {missing}"
    assert set(parser.commands) == {"worker", "defer", "schema", "healthchecks", "shell"}


def test_variable_names_follow_procrastinates_rule():
    """PROCRASTINATE_[COMMAND_]OPTION, the long name upper-cased with _ for -; worker options
    take their WorkerOptions field's name; JSON_KWARGS keeps procrastinate's JSON_ARGS."""
    options = environment.variables(build_parser())
    assert len({option.env for option in options}) == len(options), "a variable is declared twice"
    for option in options:
        dest = option.action.dest
        if dest.startswith("worker_option:"):
            name = dest.split(":", 1)[1]
        elif dest == "json_kwargs":
            name = "json_args"
        else:
            name = next(f for f in option.flags if f.startswith("--"))[2:]
        parts = ["PROCRASTINATE", *([option.command] if option.command else []), name]
        assert option.env == "_".join(parts).replace("-", "_").upper(), option.flags


def test_procrastinates_documented_variables_are_all_declared():
    """The names procrastinate's CLI reads (its cli.py and command-line docs)."""
    names = {option.env for option in environment.variables(build_parser())}
    assert {
        "PROCRASTINATE_APP",
        "PROCRASTINATE_VERBOSE",
        "PROCRASTINATE_LOG_FORMAT",
        "PROCRASTINATE_LOG_FORMAT_STYLE",
        "PROCRASTINATE_WORKER_NAME",
        "PROCRASTINATE_WORKER_QUEUES",
        "PROCRASTINATE_WORKER_CONCURRENCY",
        "PROCRASTINATE_WORKER_FETCH_JOB_POLLING_INTERVAL",
        "PROCRASTINATE_WORKER_ABORT_JOB_POLLING_INTERVAL",
        "PROCRASTINATE_WORKER_SHUTDOWN_GRACEFUL_TIMEOUT",
        "PROCRASTINATE_WORKER_WAIT",
        "PROCRASTINATE_WORKER_LISTEN_NOTIFY",
        "PROCRASTINATE_WORKER_DELETE_JOBS",
        "PROCRASTINATE_DEFER_JSON_ARGS",
        "PROCRASTINATE_DEFER_QUEUE",
        "PROCRASTINATE_DEFER_LOCK",
        "PROCRASTINATE_DEFER_QUEUEING_LOCK",
        "PROCRASTINATE_DEFER_IGNORE_ALREADY_ENQUEUED",
        "PROCRASTINATE_DEFER_AT",
        "PROCRASTINATE_DEFER_IN",
        "PROCRASTINATE_DEFER_PRIORITY",
        "PROCRASTINATE_DEFER_UNKNOWN",
    } - names == set()


def test_the_docs_table_of_variables_is_the_declarations():
    text = (ROOT / "docs" / "cli.md").read_text("utf-8")
    start, end = "<!-- variables:", "<!-- /variables -->"
    documented = text[text.index(start) :].split("\n", 1)[1].split(end, 1)[0].strip()
    expected = environment.markdown_table(build_parser())
    assert documented == expected, f"update docs/cli.md's table of variables to:\n{expected}"


def test_the_cli_uses_no_private_argparse_names():
    """The environment layer reads its own declarations, not argparse's internals."""
    private = re.compile(
        r"argparse\._|\._actions\b|_option_string_actions|\._subparsers\b|_group_actions"
    )
    for path in sorted(CLI_SOURCES.glob("*.py")):
        found = private.findall(path.read_text("utf-8"))
        assert found == [], f"{path.name} uses argparse internals: {found}"


def test_the_command_line_beats_the_variable_for_every_kind_of_option():
    environ = {
        "PROCRASTINATE_DEFER_UNKNOWN": "true",
        "PROCRASTINATE_DEFER_QUEUE": "reports",
        "PROCRASTINATE_DEFER_JSON_ARGS": '{"a": 1}',
        "PROCRASTINATE_LOG_FORMAT_STYLE": "{",
        "PROCRASTINATE_APP": "from.the.variable",
    }
    args, _ = parse(environ, "defer", "t")
    assert (args.unknown, args.queue, args.json_kwargs) == (True, "reports", '{"a": 1}')
    assert (args.log_format_style, args.app) == ("{", "from.the.variable")
    args, _ = parse(
        environ,
        "--log-format-style", "$", "--app", "from.the.flag",
        "defer", "t", '{"b": 2}', "--no-unknown", "--queue", "mail",
    )  # fmt: skip
    assert (args.unknown, args.queue, args.json_kwargs) == (False, "mail", '{"b": 2}')
    assert (args.log_format_style, args.app) == ("$", "from.the.flag")


@pytest.mark.parametrize(
    ("value", "expected"), [("y", True), ("t", True), ("n", False), ("f", False)]
)
def test_procrastinates_one_letter_booleans_are_accepted(value, expected):
    args, problems = parse({"PROCRASTINATE_DEFER_IGNORE_ALREADY_ENQUEUED": value}, "defer", "t")
    assert problems["defer"] == [] and args.ignore_already_enqueued is expected


def test_ignore_already_enqueued_has_procrastinates_short_flag():
    args, _ = parse({}, "defer", "t", "-i")
    assert args.ignore_already_enqueued is True


def test_an_option_that_cannot_be_read_from_a_variable_is_refused_where_it_is_declared():
    parser = environment.Parser()
    with pytest.raises(TypeError, match="PROCRASTINATE_X: an option with action='store_const'"):
        environment.add_option(parser, "--x", env="PROCRASTINATE_X", action="store_const", const=1)


def test_a_variable_of_a_command_is_not_read_for_another():
    args, _ = parse(
        {"PROCRASTINATE_DEFER_QUEUE": "reports", "PROCRASTINATE_WORKER_NAME": "w"}, "worker"
    )
    assert "queue" not in vars(args) and worker_options_from(args) == {"name": "w"}


def test_worker_short_flags_are_procrastinates():
    args, _ = parse({}, "worker", "-n", "w", "-q", "a", "-c", "2", "-p", "0.5", "-a", "3", "-l")
    assert worker_options_from(args) == {
        "name": "w",
        "queues": ("a",),
        "concurrency": 2,
        "fetch_job_polling_interval": 0.5,
        "abort_job_polling_interval": 3.0,
        "listen_notify": True,
    }
    args, _ = parse({}, "--app", "x.app", "worker", "-a", "3")  # the worker's -a is not --app
    assert args.app == "x.app" and worker_options_from(args) == {"abort_job_polling_interval": 3.0}


def test_an_empty_variable_is_unset_as_in_procrastinate():
    from procrastinate_core.options import WorkerOptions

    environ = {
        "PROCRASTINATE_WORKER_CONCURRENCY": "",
        "PROCRASTINATE_WORKER_QUEUES": "",
        "PROCRASTINATE_DEFER_UNKNOWN": "",
    }
    args, problems = parse(environ, "worker")
    assert not any(problems.values()) and worker_options_from(args) == {}
    defaults = {"queues": ["mail"], "concurrency": 3}
    built = WorkerOptions.build(defaults, worker_options_from(args))
    assert (built.queues, built.concurrency) == (("mail",), 3)  # the app's defaults stand
    assert WorkerOptions.build({}, worker_options_from(args)).queues is None  # all queues
    args, _ = parse(environ, "worker", "--queues", "")  # the flag: all queues, over defaults
    assert WorkerOptions.build(defaults, worker_options_from(args)).queues is None
