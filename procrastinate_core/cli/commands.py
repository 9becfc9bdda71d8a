"""What each CLI subcommand does, given the parsed arguments and an App.

Every handler returns the process exit code; errors that users can fix are
raised as procrastinate_core exceptions (or CommandError) and turned into one
`Error: ...` line by `main()`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from procrastinate_core import exceptions
from procrastinate_core.cli import shell, worker_flags
from procrastinate_core.options import WorkerOptions
from procrastinate_core.schema import read_schema

logger = logging.getLogger(__name__)


class CommandError(exceptions.ProcrastinateException):
    """Bad input to a CLI command; the message says what is wrong and how to fix it."""


@contextlib.contextmanager
def opened_for_sync(app: Any) -> Iterator[Any]:
    """The app opened for sync use for the command's duration (unless its caller opened it)."""
    if getattr(app.connector.get_sync_connector(), "is_open", False):
        yield app
        return
    app.open()
    try:
        yield app
    finally:
        app.close()


# -- worker ----------------------------------------------------------------------
async def _run_worker(app: Any, options: dict[str, Any], args: argparse.Namespace) -> None:
    async with app.open_async():
        port = getattr(args, "metrics_port", None)
        if port is None:
            await app.run_worker_async(**options)
            return
        from procrastinate_core.metrics import WorkerExporter

        async with WorkerExporter(app.job_manager, port, host=args.metrics_host) as exporter:
            middleware = WorkerOptions.build(app.worker_defaults, options).worker_middleware
            await app.run_worker_async(
                **{**options, "worker_middleware": (*middleware, exporter.job_metrics)}
            )


def worker(app: Any, args: argparse.Namespace, out: TextIO) -> int:
    """Run a worker until it stops; import failures of import_paths end it with exit 1."""
    import asyncio

    options = worker_flags.worker_options_from(args)
    WorkerOptions.build(app.worker_defaults, options)  # bad values: error before connecting
    if getattr(args, "metrics_port", None) is not None:
        from procrastinate_core import metrics

        metrics.require_prometheus()  # a missing extra is said before connecting
    app.perform_import_paths()
    asyncio.run(_run_worker(app, options, args))
    return 0


# -- defer -----------------------------------------------------------------------
def _parse_kwargs(text: str, loads: Callable[[str], Any] = json.loads) -> dict[str, Any]:
    """The task's arguments, decoded by the connector's `json_loads` (as procrastinate does),
    so a custom decoder (dates, decimals...) applies to the command line too."""
    try:
        value = loads(text)
    except ValueError as exc:
        raise CommandError(
            f"JSON_KWARGS {text!r} is not valid JSON ({exc}); pass an object such as "
            "'{\"user_id\": 12}'"
        ) from None
    if not isinstance(value, dict):
        raise CommandError(
            f"JSON_KWARGS {text!r} is a JSON {type(value).__name__}, not an object; the task's "
            "arguments are passed by name, e.g. '{\"user_id\": 12}'"
        )
    return value


def _parse_at(text: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"--at {text!r} is not an ISO 8601 date-time; use e.g. 2030-01-01T09:00:00+01:00"
        ) from None
    if moment.tzinfo is None:
        raise CommandError(
            f"--at {text!r} has no time zone; add one, e.g. {text}+00:00 (or {text}Z for UTC)"
        )
    return moment


def _import_task_module(app: Any, task_name: str) -> None:
    """Import the module a dotted task name points to, in case it registers the task."""
    module_path = task_name.rpartition(".")[0]
    if not module_path or task_name in app.tasks:
        return
    try:
        importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        if exc.name and (module_path + ".").startswith(exc.name + "."):
            return  # not a module path: the registry check in defer() says what is known
        raise CommandError(_import_failure(module_path, task_name, exc)) from exc
    except Exception as exc:
        raise CommandError(_import_failure(module_path, task_name, exc)) from exc


def _import_failure(module_path: str, task_name: str, exc: Exception) -> str:
    return (
        f"cannot import module {module_path!r} to find task {task_name!r}: "
        f"{type(exc).__name__}: {exc}. Fix the module, or pass --unknown to defer the job "
        "without it (with the default queue and priority unless given)"
    )


def defer(app: Any, args: argparse.Namespace, out: TextIO) -> int:
    """Defer one job; print its id on stdout (and what was deferred on stderr)."""
    task_kwargs = _parse_kwargs(args.json_kwargs, app.connector.json_loads)
    configure: dict[str, Any] = {}
    for option in ("queue", "priority", "lock", "queueing_lock"):
        value = getattr(args, option)
        if value is not None:
            configure[option] = value
    if args.at is not None:
        configure["schedule_at"] = _parse_at(args.at)
    if args.in_seconds is not None:
        if args.in_seconds < 0:
            raise CommandError(f"--in {args.in_seconds:g}: expected a number of seconds >= 0")
        configure["schedule_in"] = {"seconds": args.in_seconds}
    app.perform_import_paths()
    try:
        _import_task_module(app, args.task)
    except CommandError as exc:
        if not args.unknown:
            raise
        logger.warning(
            "%s; deferring it as an unknown task (--unknown)",
            exc,
            extra={"action": "defer_unknown"},
        )
    if args.task not in app.tasks and not args.unknown:
        raise CommandError(
            f"task {args.task!r} is not registered in this app (known tasks: "
            f"{', '.join(sorted(app.tasks)) or 'none'}; import paths: {app.import_paths}). "
            "Add its module to the app's import_paths, or pass --unknown to defer it anyway."
        )
    deferrer = app.configure_task(args.task, allow_unknown=True, **configure)
    with opened_for_sync(app):
        try:
            job = app.job_manager.defer_job(deferrer.make_new_job(**task_kwargs))
        except exceptions.AlreadyEnqueued as exc:
            if not args.ignore_already_enqueued:
                raise
            print(f"Not deferred: {exc}", file=sys.stderr)
            return 0
    when = f" at {job.scheduled_at.isoformat()}" if job.scheduled_at else ""
    print(f"Deferred {job.call_string} on queue {job.queue!r}{when}", file=sys.stderr)
    print(job.id, file=out)
    return 0


# -- schema ----------------------------------------------------------------------
def schema(app: Any, args: argparse.Namespace, out: TextIO) -> int:
    if args.schema_action == "read":
        print(read_schema(), file=out)
        return 0
    with opened_for_sync(app):
        if args.schema_action == "apply":
            applied = app.schema_manager.apply_schema()
            status = app.schema_manager.get_status()
            if applied:
                print(f"Applied migrations {applied}; {status.describe()}", file=out)
            else:
                print(f"Nothing to apply: {status.describe()}", file=out)
            return 0
        status = app.schema_manager.get_status()
    if status.is_current:
        print(status.describe(), file=out)
        return 0
    print(f"Error: {status.describe()}", file=sys.stderr)
    return 1


# -- healthchecks ----------------------------------------------------------------
def _report(out: TextIO, name: str, ok: bool, detail: str) -> bool:
    detail = " ".join(detail.split())  # one line per check, even for multi-line driver errors
    print(f"{name}: {'OK' if ok else 'FAIL'} - {detail}", file=out)
    return ok


def healthchecks(app: Any, args: argparse.Namespace, out: TextIO) -> int:
    """Database, schema, workers: one line each; exit 1 if any failed."""
    try:
        with opened_for_sync(app):
            app.job_manager.check_connection()
            _report(out, "database", True, "PostgreSQL answers")
            status = app.schema_manager.get_status()
            results = [_report(out, "schema", status.is_current, status.describe())]
            if status.applied:
                results.append(_check_workers(app, args, out))
    except exceptions.ConnectorException as exc:
        _report(out, "database", False, str(exc))
        return 1
    return 0 if all(results) else 1


def _check_workers(app: Any, args: argparse.Namespace, out: TextIO) -> bool:
    timeout = WorkerOptions.build(app.worker_defaults).stalled_worker_timeout
    workers = app.job_manager.list_workers()
    stalled = [w for w in workers if w["heartbeat_age"] > timeout]
    ok = True
    for w in workers:
        late = w["heartbeat_age"] > timeout
        ok = (
            _report(
                out,
                f"worker {w['id']} ({w['name'] or 'no name'}, {w['host']}, pid {w['pid']})",
                not late,
                f"last heartbeat {w['heartbeat_age']:.1f}s ago"
                + (f", over stalled_worker_timeout={timeout:g}s: stalled" if late else ""),
            )
            and ok
        )
    alive = len(workers) - len(stalled)
    summary = f"{alive} live, {len(stalled)} stalled (stalled_worker_timeout={timeout:g}s)"
    if alive < args.min_workers:
        return _report(out, "workers", False, f"{summary}; --min-workers={args.min_workers}")
    return _report(out, "workers", ok, summary) and ok


def run_shell(app: Any, args: argparse.Namespace, out: TextIO) -> int:
    with opened_for_sync(app):
        commands = shell.ShellCommands(app, out)
        if args.shell_command is None:
            shell.Shell(commands, stdout=out).cmdloop()
            return 0
        try:
            return commands.run(args.shell_command, args.shell_args)
        except shell.ShellUsageError as exc:
            if str(exc):
                print(f"Error: {exc}", file=sys.stderr)
                if exc.usage:
                    print(exc.usage.rstrip(), file=sys.stderr)
                return 2
            return 0  # `shell COMMAND --help` printed its help


HANDLERS = {
    "worker": worker,
    "defer": defer,
    "schema": schema,
    "healthchecks": healthchecks,
    "shell": run_shell,
}
