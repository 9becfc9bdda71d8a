"""Options from the environment: each option names its variable where it is added.

As in procrastinate's CLI, every option can come from an environment variable,
which is how containers and process managers configure a worker
(`PROCRASTINATE_WORKER_CONCURRENCY=8`, `PROCRASTINATE_VERBOSE=1`,
`PROCRASTINATE_DEFER_UNKNOWN=true`): `PROCRASTINATE_<OPTION>` for a global
option, `PROCRASTINATE_<COMMAND>_<OPTION>` for a command's. A flag on the
command line wins over the variable, and the variable wins over
`App(worker_defaults=...)`.

Options are added with `add_option(parser, "--queues", env=..., ...)` on a
`Parser`, which keeps the list of what was declared: reading the environment,
the `[env: ...]` help suffix and the table in docs/cli.md all come from that
list, never from argparse's internals.

An empty variable counts as unset (as in procrastinate: `PROCRASTINATE_WORKER_QUEUES=`
leaves the queues to `worker_defaults`, else all queues). A variable is checked like
its flag. A bad value is a usage error naming the variable, raised only when its
command runs: a typo in the worker's variables does not break `defer` in the same
environment.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

PREFIX = "PROCRASTINATE"
#: Boolean spellings: ours, plus procrastinate's one-letter ones (1/y/t, 0/n/f).
TRUE = ("1", "true", "yes", "on", "y", "t")
FALSE = ("0", "false", "no", "off", "n", "f")

#: Problems found in the environment, by command (None: the global options).
Problems = dict[str | None, list[str]]

#: Namespace attribute (suffixed by the command) mapping each option's dest to the
#: (variable, raw value, converted value) it came from.
SOURCES = "environment_sources:"


class AppendOverDefault(argparse.Action):
    """Repeatable flag (`--worker-middleware a --worker-middleware b`) whose first use
    replaces the default instead of extending it.

    The default can come from a variable, and a flag must win over its
    variable, as single-valued flags do.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        given = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, [*given, values])


class Container(Protocol):
    """A parser or an argument group of one (what `add_argument` is called on)."""

    def add_argument(self, *name_or_flags: str, **kwargs: Any) -> argparse.Action: ...


@dataclasses.dataclass(frozen=True)
class Option:
    """One option as declared: its flags, its variable (None: none) and how to read it."""

    flags: tuple[str, ...]
    env: str | None
    command: str | None  # None: a global option
    parser: argparse.ArgumentParser  # the parser of its command, whose defaults it sets
    action: argparse.Action
    read: Callable[[str], Any]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that keeps the options declared through `add_option`.

    Command parsers share their root's list (`add_command`), so the whole CLI's
    variables are known from the root; `commands` holds the parsers `add_command`
    made (the shell's, made by shell.py, declares no option with a variable).
    """

    def __init__(
        self,
        *args: Any,
        command: str | None = None,
        options: list[Option] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.command = command
        self.options: list[Option] = [] if options is None else options
        self.commands: dict[str, Parser] = {}


class Commands(Protocol):
    """What `add_subparsers()` returns, as far as `add_command` needs it."""

    def add_parser(self, name: str, **kwargs: Any) -> Any: ...


def add_command(root: Parser, subparsers: Commands, name: str, **kwargs: Any) -> Parser:
    """A command's parser, sharing `root`'s declared options.

    Its variables are PROCRASTINATE_<NAME>_*.
    """
    parser = subparsers.add_parser(name, command=name, options=root.options, **kwargs)
    if not isinstance(parser, Parser):
        raise TypeError("create the commands with root.add_subparsers(parser_class=Parser)")
    root.commands[name] = parser
    return parser


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError(f"expected a boolean: {'/'.join(TRUE)} or {'/'.join(FALSE)}")


def _count(value: str) -> int:
    count = int(value)
    if count < 0:
        raise ValueError("expected a count of 0 or more")
    return count


def _reader(kind: Any, action: argparse.Action, env: str) -> Callable[[str], Any]:
    """How a variable's text becomes the option's value, from how the option was declared.

    For a flag, the variable gives the value of its dest (`..._WAIT=false` is `--one-shot`).
    """
    if kind in ("store_true", "store_false", argparse.BooleanOptionalAction):
        return _boolean
    if kind == "count":
        return _count
    convert: Callable[[str], Any] = action.type if callable(action.type) else str
    if kind is AppendOverDefault:  # several values, comma-separated
        return lambda value: [convert(part.strip()) for part in value.split(",") if part.strip()]
    if kind not in (None, "store"):
        raise TypeError(f"{env}: an option with action={kind!r} cannot come from a variable")
    choices = action.choices

    def read(value: str) -> Any:
        converted = convert(value)
        if choices is not None and converted not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}")
        return converted

    return read


def add_option(
    parser: Parser, *flags: str, env: str | None, group: Container | None = None, **kwargs: Any
) -> argparse.Action:
    """Add an option to `parser` (or to its `group`) with the variable it may come from.

    `env=None` declares an option without a variable (the second flag of a
    pair such as --wait/--one-shot, whose variable is on the first).
    """
    if env is not None:
        kwargs["help"] = f"{kwargs.get('help') or ''} [env: {env}]".strip()
    action = (group or parser).add_argument(*flags, **kwargs)
    read = _reader(kwargs.get("action"), action, env) if env is not None else str
    parser.options.append(Option(flags, env, parser.command, parser, action, read))
    return action


def variables(parser: Parser) -> list[Option]:
    """The options of the CLI that have a variable, in declaration order."""
    return [option for option in parser.options if option.env is not None]


def apply(parser: Parser, environ: Mapping[str, str]) -> Problems:
    """Turn the variables set in `environ` into option defaults of `parser` and its commands.

    Returns the values that could not be used, by command, for the caller to
    report once it knows the command.
    """
    problems: Problems = {None: [], **{name: [] for name in parser.commands}}
    found: dict[int, tuple[Option, dict[str, Any], dict[str, tuple[str, str, Any]]]] = {}
    for option in variables(parser):
        _, defaults, sources = found.setdefault(id(option.parser), (option, {}, {}))
        name, dest = option.env or "", option.action.dest
        if not environ.get(name) or dest in defaults:  # empty: unset, as in procrastinate
            continue
        raw = environ[name]
        try:
            defaults[dest] = option.read(raw)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            problems.setdefault(option.command, []).append(
                f"environment variable {name}={raw!r}: {exc}"
            )
        else:
            sources[dest] = (name, raw, defaults[dest])
    for first, defaults, sources in found.values():
        first.parser.set_defaults(**defaults, **{SOURCES + (first.command or ""): sources})
    return problems


def explain(exc: BaseException, args: argparse.Namespace) -> str:
    """The message of an error about an option, naming its variable when the value came from one.

    A value can pass its flag's type (`PROCRASTINATE_WORKER_CONCURRENCY=0` is an
    int) and be refused later by the option itself ("concurrency=0: expected an
    int >= 1"); the user must learn which variable to fix.
    """
    message = str(exc)
    command = getattr(args, "command", None) or ""
    for key in (SOURCES + command, SOURCES):
        for dest, (name, raw, value) in (getattr(args, key, None) or {}).items():
            option = dest.split(":", 1)[-1]
            from_variable = getattr(args, dest, None) == value  # else a flag overrode it
            if from_variable and message.startswith((f"{option}=", f"worker: {option}=")):
                return (
                    f"environment variable {name}={raw!r}: {message.rstrip('.')}. "
                    f"Fix or unset {name} (a command-line flag also overrides it)."
                )
    return message


def markdown_table(parser: Parser) -> str:
    """The table of every variable, as docs/cli.md shows it (a test keeps the two equal)."""
    rows = ["| Variable | Command | Flags |", "| --- | --- | --- |"]
    for option in variables(parser):
        shown = option.action.option_strings or [str(option.action.metavar or option.action.dest)]
        flags = ", ".join(f"`{flag}`" for flag in shown)
        rows.append(f"| `{option.env}` | {option.command or '(global)'} | {flags} |")
    return "\n".join(rows)
