"""`shell`: inspect and act on jobs, interactively (cmd.Cmd) or one command at a time.

`procrastinate-core shell` opens a prompt; `procrastinate-core shell cancel 12`
runs one command and exits (0 on success, 1 when the command could not do what
was asked, 2 on a usage error). Both forms parse a command's arguments with the
same small parser, so they accept exactly the same things: our options
(`list_jobs --queue other --details`) or procrastinate's shell spelling
(`list_jobs queue=other details`).
"""

from __future__ import annotations

import argparse
import cmd
import json
import shlex
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from procrastinate_core import exceptions
from procrastinate_core.cli import environment, flow_commands
from procrastinate_core.jobs import RETRY_RULE, RETRYABLE_STATUSES, Job, Status
from procrastinate_core.options import WorkerOptions

STATUSES = [status.value for status in Status]


class ShellUsageError(Exception):
    """A shell command was called with arguments its parser refuses."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class CommandParser(argparse.ArgumentParser):
    """An argparse parser that raises instead of exiting (the prompt must survive a typo).

    It remembers its on/off flags (`action="store_true"`) as they are added, for
    procrastinate's spelling, where a bare `details` means `--details`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.switches: set[str] = set()

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if kwargs.get("action") == "store_true":
            self.switches.add(action.dest)
        return action

    def error(self, message: str) -> Any:
        raise ShellUsageError(f"{self.prog}: {message}", self.format_usage())

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        raise ShellUsageError(message or "", "")  # only reached by --help, printed already


def non_negative_int(value: str) -> int:
    """argparse type for counts: an int >= 0."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{number}: expected a number >= 0")
    return number


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", help="only jobs of this queue")
    parser.add_argument("--task", help="only jobs of this task name")
    parser.add_argument("--status", choices=STATUSES, help="only jobs in this status")
    parser.add_argument("--lock", help="only jobs with this lock")


def _job_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="JOB_ID", type=int, help="id of the job")


def _build_command_parsers() -> dict[str, CommandParser]:
    parsers: dict[str, CommandParser] = {}

    def new(name: str, description: str) -> CommandParser:
        parser = CommandParser(prog=name, description=description, allow_abbrev=False)
        parsers[name] = parser
        return parser

    p = new("list_jobs", "List jobs, oldest first, optionally filtered.")
    p.add_argument("--id", type=int, help="only the job with this id")
    _filters(p)
    p.add_argument("--queueing-lock", help="only jobs with this queueing lock")
    p.add_argument("--worker", type=int, help="only jobs held (or last run) by this worker id")
    p.add_argument("--limit", type=non_negative_int, help="show at most this many jobs")
    p.add_argument("--details", action="store_true", help="also show arguments, attempts, times")
    for name, what in (("list_queues", "queue"), ("list_tasks", "task"), ("list_locks", "lock")):
        _filters(new(name, f"Count jobs per {what} and status."))
    p = new("show", "Show one job and its history.")
    _job_id(p)
    p = new("cancel", "Cancel a waiting job (it will not run).")
    _job_id(p)
    p.add_argument("--delete", action="store_true", help="delete the job instead of keeping it")
    _job_id(new("abort", "Ask a running job to stop (a waiting one is cancelled)."))
    _job_id(
        new(
            "retry",
            "Put a failed, aborted or cancelled job back in the queue (not a succeeded one).",
        )
    )
    p = new("recover_stalled", "Requeue the jobs of workers whose heartbeat is too old.")
    p.add_argument(
        "--seconds",
        type=float,
        help="heartbeat age that makes a worker stalled (default: the app's "
        "stalled_worker_timeout)",
    )
    new("list_workers", "List registered workers and the age of their last heartbeat.")
    flow_commands.add_parsers(new)  # pause_queue, resume_queue, ... (#13)
    return parsers


COMMAND_PARSERS = _build_command_parsers()


def procrastinate_style(parser: CommandParser, argv: Sequence[str]) -> list[str]:
    """procrastinate's shell spelling turned into ours: `key=value` -> `--key value`, and a
    bare word naming one of the command's on/off flags (`details`) -> `--details`.

    Everything else (our `--queue other`, positional job ids) passes unchanged, so
    both spellings work, even mixed.
    """
    switches = parser.switches
    translated: list[str] = []
    for token in argv:
        key, equals, value = token.partition("=")
        if token.startswith("-"):
            translated.append(token)
        elif equals and key:
            translated += ["--" + key.replace("_", "-"), value]
        elif token in switches:
            translated.append("--" + token.replace("_", "-"))
        else:
            translated.append(token)
    return translated


def _describe(job: Job, details: bool) -> str:
    line = f"#{job.id} {job.task_name} on {job.queue} - [{job.status}]"
    if details:
        extras = {
            "attempts": job.attempts,
            "priority": job.priority,
            "lock": job.lock,
            "queueing_lock": job.queueing_lock,
            "scheduled_at": job.scheduled_at.isoformat() if job.scheduled_at else None,
            "worker": job.worker_id,
            "args": json.dumps(job.task_kwargs, default=str),
        }
        line += " (" + ", ".join(f"{k}={v}" for k, v in extras.items() if v is not None) + ")"
    return line


def _error_text(entry: dict[str, Any]) -> str:
    """One attempt's error as a person reads it: a heading, then the traceback as printed
    by Python (its own lines, indented), never one JSON line of \\n escapes."""
    where = [f"attempt {entry['attempt']}"] if entry.get("attempt") is not None else []
    if entry.get("worker_id") is not None:
        where.append(f"worker {entry['worker_id']}")
    at = entry.get("at")
    if at is not None:
        where.append(f"at {at.isoformat() if hasattr(at, 'isoformat') else at}")
    heading = "  error" + (f" ({', '.join(where)})" if where else "") + ": "
    heading += ": ".join(str(entry[k]) for k in ("type", "message") if entry.get(k) is not None)
    traceback = entry.get("traceback")
    if not isinstance(traceback, str) or not traceback.strip():
        return heading
    return heading + "\n" + textwrap.indent(traceback.rstrip("\n"), "    ")


class ShellCommands(flow_commands.FlowShellCommands):
    """The commands themselves; each writes to `out` and returns an exit code."""

    def __init__(self, app: Any, out: TextIO) -> None:
        self.app = app
        self.manager = app.job_manager
        self.out = out

    def say(self, text: str) -> None:
        print(text, file=self.out)

    def run(self, name: str, argv: Sequence[str]) -> int:
        """Parse `argv` with the command's parser and run it (raises ShellUsageError)."""
        parser = COMMAND_PARSERS.get(name)
        if parser is None:
            raise ShellUsageError(
                f"unknown shell command {name!r}; commands: {', '.join(COMMAND_PARSERS)}", ""
            )
        args = parser.parse_args(procrastinate_style(parser, argv))
        handler: Callable[[argparse.Namespace], int] = getattr(self, "cmd_" + name)
        try:
            return handler(args)
        except exceptions.ProcrastinateException as exc:
            self.say(f"Error: {exc}")
            return 1

    def cmd_list_jobs(self, args: argparse.Namespace) -> int:
        jobs = self.manager.list_jobs(
            id=args.id,
            queue=args.queue,
            task=args.task,
            status=args.status,
            lock=args.lock,
            queueing_lock=args.queueing_lock,
            worker_id=args.worker,
            limit=args.limit,
        )
        for job in jobs:
            self.say(_describe(job, args.details))
        if not jobs:
            self.say("No job matches.")
        return 0

    def _counts(self, rows: list[dict[str, Any]], what: str) -> int:
        for row in rows:
            counts = ", ".join(f"{status}: {row[status]}" for status in STATUSES)
            self.say(f"{row['name']}: {row['jobs_count']} jobs ({counts})")
        if not rows:
            self.say(f"No {what} matches.")
        return 0

    def _filter_kwargs(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"queue": args.queue, "task": args.task, "status": args.status, "lock": args.lock}

    def cmd_list_queues(self, args: argparse.Namespace) -> int:
        return self._counts(self.manager.list_queues(**self._filter_kwargs(args)), "queue")

    def cmd_list_tasks(self, args: argparse.Namespace) -> int:
        return self._counts(self.manager.list_tasks(**self._filter_kwargs(args)), "task")

    def cmd_list_locks(self, args: argparse.Namespace) -> int:
        return self._counts(self.manager.list_locks(**self._filter_kwargs(args)), "lock")

    def cmd_show(self, args: argparse.Namespace) -> int:
        jobs = self.manager.list_jobs(id=args.job_id)
        if not jobs:
            self.say(f"Error: no job with id {args.job_id}")
            return 1
        self.say(_describe(jobs[0], details=True))
        for event in self.manager.list_job_events(args.job_id):
            rest = {k: v for k, v in event.items() if k not in ("type", "at", "job_id", "id")}
            detail = " ".join(f"{k}={v}" for k, v in rest.items() if v is not None)
            self.say(f"  {event['at'].isoformat()} {event['type']} {detail}".rstrip())
        errors = self.manager.list_job_errors(args.job_id)
        if not errors and jobs[0].error:
            errors = [jobs[0].error]  # an error written without its history
        for entry in errors:
            self.say(_error_text(entry))
        return 0

    def _refused(self, job_id: int, verb: str, why: str) -> int:
        status = self.manager.get_job_status(job_id)  # JobNotFound: "no job with id N"
        self.say(f"Error: job {job_id} was not {verb}: it is {status.value}; {why}")
        return 1

    def cmd_cancel(self, args: argparse.Namespace) -> int:
        if self.manager.cancel_job_by_id(args.job_id, delete_job=args.delete):
            self.say(f"Job {args.job_id} {'deleted' if args.delete else 'cancelled'}.")
            return 0
        return self._refused(
            args.job_id,
            "deleted" if args.delete else "cancelled",
            "only waiting (todo) jobs can be cancelled; use `abort` for a running one",
        )

    def cmd_abort(self, args: argparse.Namespace) -> int:
        if self.manager.cancel_job_by_id(args.job_id, abort=True):
            status = self.manager.get_job_status(args.job_id)
            done = "cancelled" if status is Status.CANCELLED else "asked to abort"
            self.say(f"Job {args.job_id} {done}.")
            return 0
        return self._refused(args.job_id, "aborted", "it has already finished")

    def cmd_retry(self, args: argparse.Namespace) -> int:
        if self.manager.retry_job_by_id(args.job_id, statuses=RETRYABLE_STATUSES):
            self.say(f"Job {args.job_id} is waiting again (todo).")
            return 0
        return self._refused(args.job_id, "retried", RETRY_RULE)

    def cmd_recover_stalled(self, args: argparse.Namespace) -> int:
        seconds = args.seconds
        if seconds is None:
            seconds = WorkerOptions.build(self.app.worker_defaults).stalled_worker_timeout
        if seconds <= 0:
            self.say(f"Error: --seconds={seconds:g}: expected a number > 0")
            return 1
        recovered = self.manager.recover_stalled_jobs(seconds)
        for job_id, status in recovered:
            self.say(f"#{job_id} recovered - [{status.value}]")
        self.say(f"Recovered {len(recovered)} job(s) of workers silent for {seconds:g}s or more.")
        return 0

    def cmd_list_workers(self, args: argparse.Namespace) -> int:
        workers = self.manager.list_workers()
        for worker in workers:
            self.say(
                f"worker {worker['id']} {worker['name'] or '(no name)'} on {worker['host']} "
                f"pid {worker['pid']}: last heartbeat {worker['heartbeat_age']:.1f}s ago"
            )
        if not workers:
            self.say("No worker registered.")
        return 0


class Shell(cmd.Cmd):
    """The interactive prompt; `help` lists the commands, `help COMMAND` their options."""

    intro = "procrastinate_core shell: type `help` for the commands, `exit` (or Ctrl-D) to leave."
    prompt = "procrastinate> "

    def __init__(
        self, commands: ShellCommands, stdin: TextIO | None = None, stdout: TextIO | None = None
    ) -> None:
        super().__init__(stdin=stdin, stdout=stdout)
        self.commands = commands
        if stdin is not None:
            self.use_rawinput = False

    def onecmd(self, line: str) -> bool:
        name, _, rest = line.strip().partition(" ")
        if name in COMMAND_PARSERS:
            try:
                self.commands.run(name, shlex.split(rest))
            except ShellUsageError as exc:
                if str(exc):
                    self.commands.say(str(exc))
            except ValueError as exc:  # shlex: unbalanced quotes
                self.commands.say(f"Error: {exc}")
            return False
        return super().onecmd(line)

    def default(self, line: str) -> None:
        self.commands.say(
            f"Unknown command {line.split()[0]!r}; commands: {', '.join(COMMAND_PARSERS)}, exit"
        )

    def emptyline(self) -> bool:
        return False  # do not repeat the last command

    def do_help(self, arg: str) -> bool | None:
        name = arg.strip()
        if name in COMMAND_PARSERS:
            self.commands.say(COMMAND_PARSERS[name].format_help().rstrip())
            return None
        if name:
            return super().do_help(arg)
        for command, parser in COMMAND_PARSERS.items():
            self.commands.say(f"  {command:16} {parser.description}")
        self.commands.say(f"  {'exit':16} Leave the shell.")
        return None

    def do_exit(self, arg: str) -> bool:
        """Leave the shell."""
        return True

    def do_EOF(self, arg: str) -> bool:
        self.commands.say("")
        return True


def add_shell_parser(root: environment.Parser, subparsers: environment.Commands) -> None:
    commands = ", ".join(COMMAND_PARSERS)
    parser = environment.add_command(
        root,
        subparsers,
        "shell",
        allow_abbrev=False,
        help="inspect and act on jobs (interactive, or one command)",
        description="Without COMMAND: an interactive prompt. With COMMAND: run it and exit. "
        f"Commands: {commands}. `shell COMMAND --help` shows a command's options.",
    )
    parser.add_argument("shell_command", metavar="COMMAND", nargs="?", help=f"one of: {commands}")
    parser.add_argument(
        "shell_args", metavar="ARGS", nargs=argparse.REMAINDER, help="its arguments"
    )
