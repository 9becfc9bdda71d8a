"""The command line: `procrastinate-core` / `python -m procrastinate_core`.

    procrastinate-core --app=myproject.tasks.app worker --concurrency=10
    procrastinate-core defer myproject.tasks.index '{"page": 3}' --in 60
    procrastinate-core schema --check
    procrastinate-core healthchecks
    procrastinate-core shell list_jobs --status failed

See docs/cli.md for every command and flag. Every option may also come from
an environment variable: PROCRASTINATE_APP, PROCRASTINATE_VERBOSE,
PROCRASTINATE_WORKER_CONCURRENCY, PROCRASTINATE_DEFER_UNKNOWN..., each declared
where its option is added (cli/environment.py: add_option).

Reusing the CLI from other programs (this is what `manage.py procrastinate`
builds on):

- `main(argv=None, *, app=None, prog=None) -> int` parses `argv` (default:
  sys.argv[1:]), runs the command and returns the exit code; it never calls
  sys.exit and restores the logging configuration it changed. Pass `app=` to
  use that App: the parser then has no --app option. `prog=` sets the program
  name shown in usage and errors. Exit codes: 0 success, 1 the command failed
  (the reason is printed as one `Error: ...` line on stderr), 2 usage error.
- `build_parser(*, with_app_option=True, prog=None)` returns the
  argparse parser, for callers that want to add or inspect options.
- `run_command(app, args, out)` runs already-parsed arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from procrastinate_core import exceptions
from procrastinate_core.cli import commands, environment, logs
from procrastinate_core.cli.parser import APP_ENV_VAR, build_parser

if TYPE_CHECKING:
    from procrastinate_core.app import App

__all__ = ["build_parser", "main", "run_command"]

logger = logging.getLogger(__name__)


def load_app(dotted_path: str | None) -> App:
    """The App named on the command line (or in PROCRASTINATE_APP)."""
    from procrastinate_core.app import App

    if not dotted_path:
        raise commands.CommandError(
            f"no app given: pass --app=dotted.path.to.app (e.g. --app=myproject.tasks.app) "
            f"or set {APP_ENV_VAR}"
        )
    return App.from_path(dotted_path)


def run_command(app: App | None, args: argparse.Namespace, out: TextIO) -> int:
    """Run parsed arguments against `app` (None only for commands that need no database)."""
    if app is None:
        if args.command == "schema" and args.schema_action == "read":
            return commands.schema(None, args, out)
        app = load_app(getattr(args, "app", None))
    return commands.HANDLERS[args.command](app, args, out)


def main(
    argv: Sequence[str] | None = None, *, app: App | None = None, prog: str | None = None
) -> int:
    """Run the CLI; returns the exit code (see the module docstring)."""
    parser = build_parser(with_app_option=app is None, prog=prog)
    from_environment = environment.apply(parser, os.environ)
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        unusable = from_environment[None] + from_environment.get(args.command, [])
        if unusable:
            parser.error("; ".join(unusable))
        try:
            logs.make_formatter(args.log_format, args.log_format_style)
        except ValueError as exc:
            parser.error(str(exc))
    except SystemExit as exc:  # --help, --version, usage errors: argparse printed why
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    with logs.cli_logging(args.verbose, args.log_format, args.log_format_style):
        try:
            return run_command(app, args, sys.stdout)
        except exceptions.ProcrastinateException as exc:
            logger.debug("Command failed", exc_info=True, extra={"action": "cli_error"})
            print(f"Error: {environment.explain(exc, args)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            return 130
