"""`manage.py procrastinate worker|defer|schema|healthchecks|shell ...`: the core CLI on the
project's App.

The arguments go untouched to procrastinate_core.cli.main (same commands and
flags as `procrastinate-core`, minus --app): the App is procrastinate_django.app,
on a connector built from DATABASES (PROCRASTINATE_CONNECTOR picks the driver).
System checks run first, so bad PROCRASTINATE_* settings stop it with their names.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, SystemCheckError

from procrastinate_core import cli, exceptions
from procrastinate_core.app import App

PROG = "manage.py procrastinate"
# Handled by manage.py itself before we run; they must not reach the core parser.
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


def _without_django_options(argv: list[str]) -> list[str]:
    kept: list[str] = []
    skip_next = False
    for token in argv:
        if skip_next:
            skip_next = False
        elif token in _DJANGO_OPTIONS:
            skip_next = True
        elif not token.startswith(tuple(f"{o}=" for o in _DJANGO_OPTIONS)):
            kept.append(token)
    return kept


def _subcommand(argv: list[str]) -> str | None:
    """The core CLI command named in argv (the first word that is not an option or its value)."""
    skip_next = False
    for token in argv:
        if skip_next:
            skip_next = False
        elif token in ("--log-format", "--log-format-style"):
            skip_next = True
        elif not token.startswith("-"):
            return token
    return None


def command_app(argv: list[str]) -> App:
    """The App the command runs on: the project's tasks on a connector of their own."""
    from procrastinate_django.procrastinate_app import app

    if _subcommand(argv) == "worker":
        return app.worker_app()
    return app.with_connector(app.make_worker_connector())


class Command(BaseCommand):
    help = (
        "Run workers and manage jobs (worker, defer, schema, healthchecks, shell); "
        f"`{PROG} --help` lists the commands and their flags."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="core CLI arguments")

    def run_from_argv(self, argv: list[str]) -> None:
        """Bypass Django's option parser: every argument belongs to the core CLI."""
        try:
            code = self.run_cli(_without_django_options(argv[2:]))
        except CommandError as exc:
            # A SystemCheckError's text already starts with its name, as Django prints it.
            text = str(exc) if isinstance(exc, SystemCheckError) else f"{type(exc).__name__}: {exc}"
            self.stderr.write(text)
            sys.exit(exc.returncode)
        if code:
            sys.exit(code)

    def handle(self, *args: Any, **options: Any) -> None:
        """For call_command("procrastinate", "healthchecks", ...): raises on a non-zero exit."""
        code = self.run_cli([str(a) for a in args])
        if code:
            raise CommandError(f"{PROG} {' '.join(args)} exited with code {code}", returncode=code)

    def run_cli(self, argv: list[str]) -> int:
        """System checks, then procrastinate_core.cli.main; the exit code."""
        help_only = any(a in ("-h", "--help", "-V", "--version") for a in argv)
        if not help_only:
            self.check()
        try:
            app = None if help_only else command_app(argv)
        except exceptions.ProcrastinateException as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        if app is None:
            from procrastinate_django.procrastinate_app import app as project_app

            app = project_app
        return cli.main(argv, app=app, prog=PROG)
