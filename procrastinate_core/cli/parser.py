"""The argument parser of `procrastinate-core` / `python -m procrastinate_core`.

Built by `build_parser()` so that `manage.py procrastinate` can reuse it
without the `--app` option (its app comes from Django settings).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os

from procrastinate_core.cli import logs, shell, worker_flags

APP_ENV_VAR = "PROCRASTINATE_APP"
DEFAULT_PROG = "procrastinate-core"


def _version() -> str:
    try:
        return importlib.metadata.version("procrastinate-core")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown (not installed)"


def _add_worker(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        allow_abbrev=False,
        name="worker",
        help="run a worker",
        description="Run a worker: take jobs from the queues (all queues unless --queues) "
        "and run them until stopped by SIGINT/SIGTERM, or until idle with --one-shot.",
    )
    worker_flags.add_worker_flags(parser)
    metrics = parser.add_argument_group("metrics (needs the metrics extra: prometheus_client)")
    metrics.add_argument(
        "--metrics-port",
        type=shell.non_negative_int,
        metavar="PORT",
        help="serve Prometheus metrics on this port at /metrics (0: any free port; "
        "default: no metrics server)",
    )
    metrics.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        metavar="HOST",
        help="address the metrics server listens on (default: 0.0.0.0)",
    )


def _add_defer(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        allow_abbrev=False,
        name="defer",
        help="defer a job",
        description="Defer one job of TASK (a registered task name) and print its id.",
    )
    parser.add_argument("task", metavar="TASK", help="name of the task (e.g. shop.tasks.index)")
    parser.add_argument(
        "json_kwargs",
        metavar="JSON_KWARGS",
        nargs="?",
        default="{}",
        help="the task's keyword arguments as a JSON object (default: {})",
    )
    parser.add_argument("--queue", help="queue of the job (default: the task's queue)")
    parser.add_argument("--priority", type=int, help="higher runs first (default: the task's)")
    parser.add_argument("--lock", help="jobs sharing a lock run one at a time, in defer order")
    parser.add_argument(
        "--queueing-lock", help="refuse the job if one with this queueing lock is waiting"
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--at",
        metavar="ISO_DATETIME",
        help="run no earlier than this ISO 8601 time with a time zone, e.g. "
        "2030-01-01T09:00:00+01:00",
    )
    when.add_argument(
        "--in", dest="in_seconds", metavar="SECONDS", type=float, help="run in SECONDS"
    )
    parser.add_argument(
        "--unknown",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="allow a task name this app does not know (default: refuse it)",
    )
    parser.add_argument(
        "--ignore-already-enqueued",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="exit 0 when a job with the same --queueing-lock is already waiting",
    )


def _add_schema(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        allow_abbrev=False,
        name="schema",
        help="apply, print or check the database schema",
        description="Manage the database schema (default action: --apply).",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--apply",
        dest="schema_action",
        action="store_const",
        const="apply",
        help="apply the migrations the database lacks (safe to repeat)",
    )
    action.add_argument(
        "--read",
        dest="schema_action",
        action="store_const",
        const="read",
        help="print the schema's SQL (needs no database)",
    )
    action.add_argument(
        "--check",
        dest="schema_action",
        action="store_const",
        const="check",
        help="exit 1 unless the database is at the code's schema version",
    )
    parser.set_defaults(schema_action="apply")


def _add_healthchecks(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        allow_abbrev=False,
        name="healthchecks",
        help="check the database, the schema and the workers",
        description="Check that the database answers, that its schema is current and that "
        "no registered worker is stalled; print each check and exit 1 if one fails.",
    )
    parser.add_argument(
        "--min-workers",
        type=shell.non_negative_int,
        default=0,
        metavar="N",
        help="also fail when fewer than N live workers are registered (default: 0)",
    )


def build_parser(
    *, with_app_option: bool = True, prog: str | None = None
) -> argparse.ArgumentParser:
    """The full parser; `with_app_option=False` drops --app for callers that bring their app."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog=prog or DEFAULT_PROG,
        description="Run workers and manage jobs of a procrastinate_core App.",
    )
    if with_app_option:
        parser.add_argument(
            "-a",
            "--app",
            default=os.environ.get(APP_ENV_VAR) or None,
            metavar="DOTTED.PATH",
            help="the App to use, e.g. myproject.tasks.app",
        )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v for INFO, -vv for DEBUG (default: WARNING)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        metavar="text|json|FORMAT",
        help="text: 'time LEVEL logger message key=value...'; json: one object per line; "
        "anything else is a logging format string, e.g. '%%(levelname)s %%(message)s'",
    )
    parser.add_argument(
        "--log-format-style",
        choices=logs.LOG_FORMAT_STYLES,
        default="%",
        help="the style of a --log-format string: %%, { or $ (default: %%)",
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_worker(subparsers)
    _add_defer(subparsers)
    _add_schema(subparsers)
    _add_healthchecks(subparsers)
    shell.add_shell_parser(subparsers)
    return parser
