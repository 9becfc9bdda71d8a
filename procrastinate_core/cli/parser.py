"""The argument parser of `procrastinate-core` / `python -m procrastinate_core`.

Built by `build_parser()` so that `manage.py procrastinate` can reuse it
without the `--app` option (its app comes from Django settings).
"""

from __future__ import annotations

import argparse
import importlib.metadata

from procrastinate_core.cli import logs, shell, worker_flags
from procrastinate_core.cli.environment import Commands, Parser, add_command, add_option

APP_ENV_VAR = "PROCRASTINATE_APP"
DEFAULT_PROG = "procrastinate-core"


def _version() -> str:
    try:
        return importlib.metadata.version("procrastinate-core")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown (not installed)"


def _add_worker(root: Parser, subparsers: Commands) -> None:
    parser = add_command(
        root,
        subparsers,
        "worker",
        allow_abbrev=False,
        help="run a worker",
        description="Run a worker: take jobs from the queues (all queues unless --queues) "
        "and run them until stopped by SIGINT/SIGTERM, or until idle with --one-shot.",
    )
    worker_flags.add_worker_flags(parser)
    metrics = parser.add_argument_group("metrics (needs the metrics extra: prometheus_client)")
    add_option(
        parser,
        "--metrics-port",
        env="PROCRASTINATE_WORKER_METRICS_PORT",
        group=metrics,
        type=shell.non_negative_int,
        metavar="PORT",
        help="serve Prometheus metrics on this port at /metrics (0: any free port; "
        "default: no metrics server)",
    )
    add_option(
        parser,
        "--metrics-host",
        env="PROCRASTINATE_WORKER_METRICS_HOST",
        group=metrics,
        default="0.0.0.0",
        metavar="HOST",
        help="address the metrics server listens on (default: 0.0.0.0)",
    )


def _add_defer(root: Parser, subparsers: Commands) -> None:
    parser = add_command(
        root,
        subparsers,
        "defer",
        allow_abbrev=False,
        help="defer a job",
        description="Defer one job of TASK (a registered task name) and print its id.",
    )
    parser.add_argument("task", metavar="TASK", help="name of the task (e.g. shop.tasks.index)")
    add_option(
        parser,
        "json_kwargs",
        env="PROCRASTINATE_DEFER_JSON_ARGS",  # procrastinate's name for it
        metavar="JSON_KWARGS",
        nargs="?",
        default="{}",
        help="the task's keyword arguments as a JSON object (default: {})",
    )
    add_option(
        parser,
        "--queue",
        env="PROCRASTINATE_DEFER_QUEUE",
        help="queue of the job (default: the task's queue)",
    )
    add_option(
        parser,
        "--priority",
        env="PROCRASTINATE_DEFER_PRIORITY",
        type=int,
        help="higher runs first (default: the task's)",
    )
    add_option(
        parser,
        "--lock",
        env="PROCRASTINATE_DEFER_LOCK",
        help="jobs sharing a lock run one at a time, in defer order",
    )
    add_option(
        parser,
        "--queueing-lock",
        env="PROCRASTINATE_DEFER_QUEUEING_LOCK",
        help="refuse the job if one with this queueing lock is waiting",
    )
    when = parser.add_mutually_exclusive_group()
    add_option(
        parser,
        "--at",
        env="PROCRASTINATE_DEFER_AT",
        group=when,
        metavar="ISO_DATETIME",
        help="run no earlier than this ISO 8601 time with a time zone, e.g. "
        "2030-01-01T09:00:00+01:00",
    )
    add_option(
        parser,
        "--in",
        env="PROCRASTINATE_DEFER_IN",
        group=when,
        dest="in_seconds",
        metavar="SECONDS",
        type=float,
        help="run in SECONDS",
    )
    add_option(
        parser,
        "--unknown",
        env="PROCRASTINATE_DEFER_UNKNOWN",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="allow a task name this app does not know (default: refuse it)",
    )
    add_option(
        parser,
        "-i",
        "--ignore-already-enqueued",
        env="PROCRASTINATE_DEFER_IGNORE_ALREADY_ENQUEUED",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="exit 0 when a job with the same --queueing-lock is already waiting",
    )


def _add_schema(root: Parser, subparsers: Commands) -> None:
    parser = add_command(
        root,
        subparsers,
        "schema",
        allow_abbrev=False,
        help="apply, print or check the database schema",
        description="Manage the database schema (default action: --apply).",
    )
    action = parser.add_mutually_exclusive_group()
    for flag, does in (
        ("--apply", "apply the migrations the database lacks (safe to repeat)"),
        ("--read", "print the schema's SQL (needs no database)"),
        ("--check", "exit 1 unless the database is at the code's schema version"),
    ):
        # Three flags setting one value: no variable (as in procrastinate).
        add_option(
            parser,
            flag,
            env=None,
            group=action,
            dest="schema_action",
            action="store_const",
            const=flag[2:],
            help=does,
        )
    parser.set_defaults(schema_action="apply")


def _add_healthchecks(root: Parser, subparsers: Commands) -> None:
    parser = add_command(
        root,
        subparsers,
        "healthchecks",
        allow_abbrev=False,
        help="check the database, the schema and the workers",
        description="Check that the database answers, that its schema is current and that "
        "no registered worker is stalled; print each check and exit 1 if one fails.",
    )
    add_option(
        parser,
        "--min-workers",
        env="PROCRASTINATE_HEALTHCHECKS_MIN_WORKERS",
        type=shell.non_negative_int,
        default=0,
        metavar="N",
        help="also fail when fewer than N live workers are registered (default: 0)",
    )


def build_parser(*, with_app_option: bool = True, prog: str | None = None) -> Parser:
    """The full parser; `with_app_option=False` drops --app for callers that bring their app.

    `environment.apply(parser, os.environ)` then reads the options' variables.
    """
    parser = Parser(
        allow_abbrev=False,
        prog=prog or DEFAULT_PROG,
        description="Run workers and manage jobs of a procrastinate_core App.",
    )
    if with_app_option:
        add_option(
            parser,
            "-a",
            "--app",
            env=APP_ENV_VAR,
            metavar="DOTTED.PATH",
            help="the App to use, e.g. myproject.tasks.app",
        )
    add_option(
        parser,
        "-v",
        "--verbose",
        env="PROCRASTINATE_VERBOSE",
        action="count",
        default=0,
        help="log more: -v for INFO, -vv for DEBUG (default: WARNING)",
    )
    add_option(
        parser,
        "--log-format",
        env="PROCRASTINATE_LOG_FORMAT",
        default="text",
        metavar="text|json|FORMAT",
        help="text: 'time LEVEL logger message key=value...'; json: one object per line; "
        "anything else is a logging format string, e.g. '%%(levelname)s %%(message)s'",
    )
    add_option(
        parser,
        "--log-format-style",
        env="PROCRASTINATE_LOG_FORMAT_STYLE",
        choices=logs.LOG_FORMAT_STYLES,
        default="%",
        help="the style of a --log-format string: %%, { or $ (default: %%)",
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=Parser
    )
    _add_worker(parser, subparsers)
    _add_defer(parser, subparsers)
    _add_schema(parser, subparsers)
    _add_healthchecks(parser, subparsers)
    shell.add_shell_parser(parser, subparsers)
    return parser
