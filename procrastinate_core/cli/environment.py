"""Options from the environment: PROCRASTINATE_<OPTION> and PROCRASTINATE_<COMMAND>_<OPTION>.

As in procrastinate's CLI, every option can come from an environment variable,
which is how containers and process managers configure a worker
(`PROCRASTINATE_WORKER_CONCURRENCY=8`, `PROCRASTINATE_VERBOSE=1`,
`PROCRASTINATE_DEFER_UNKNOWN=true`). A flag on the command line wins over the
variable, and the variable wins over `App(worker_defaults=...)`.

A variable is checked like its flag. A bad value is a usage error naming the
variable, raised only when its command runs: a typo in the worker's variables
does not break `defer` in the same environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

PREFIX = "PROCRASTINATE"
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")

#: Problems found in the environment, by command (None: the global options).
Problems = dict[str | None, list[str]]


#: Namespace attribute (suffixed by the command) mapping each option's dest to the
#: (variable, raw value) it came from.
SOURCES = "environment_sources:"

_NO_VARIABLE = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def variable_name(command: str | None, action: argparse.Action) -> str | None:
    """The variable of an option, or None for what has none (positionals, --help, subcommands)."""
    if not action.option_strings or isinstance(action, _NO_VARIABLE):
        return None
    if type(action) is argparse._StoreConstAction:  # flags sharing one dest (schema --apply/--read)
        return None
    if ":" in action.dest:  # generated options (worker_option:concurrency): the field's name
        option = action.dest.split(":", 1)[1]
    else:
        long_flags = [s for s in action.option_strings if s.startswith("--")]
        option = long_flags[0][2:] if long_flags else action.dest
    parts = [PREFIX] + ([command] if command else []) + [option]
    return "_".join(parts).replace("-", "_").upper()


def _boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(TRUE + FALSE)}")


def _converted(action: argparse.Action, value: str) -> Any:
    if isinstance(
        action,
        (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction),
    ):
        return _boolean(value)
    if isinstance(action, argparse._CountAction):
        count = int(value)
        if count < 0:
            raise ValueError("expected a count of 0 or more")
        return count
    convert: Callable[[str], Any] = action.type if callable(action.type) else str
    if isinstance(action, argparse._AppendAction):  # several values, comma-separated
        return [convert(part.strip()) for part in value.split(",") if part.strip()]
    converted = convert(value)
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"expected one of {', '.join(map(str, action.choices))}")
    return converted


def _apply_to(
    parser: argparse.ArgumentParser, command: str | None, environ: Mapping[str, str]
) -> list[str]:
    problems: list[str] = []
    defaults: dict[str, Any] = {}
    sources: dict[str, tuple[str, str, Any]] = {}
    for action in parser._actions:
        name = variable_name(command, action)
        if name is None:
            continue
        action.help = f"{action.help or ''} [env: {name}]".strip()
        if name not in environ or action.dest in defaults:
            continue
        raw = environ[name]
        try:
            defaults[action.dest] = _converted(action, raw)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            problems.append(f"environment variable {name}={raw!r}: {exc}")
        else:
            sources[action.dest] = (name, raw, defaults[action.dest])
    parser.set_defaults(**defaults, **{SOURCES + (command or ""): sources})
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


def apply(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> Problems:
    """Turn the variables set in `environ` into option defaults of `parser` and its commands.

    Every option's help names its variable. Returns the values that could not
    be used, by command, for the caller to report once it knows the command.
    """
    problems: Problems = {None: _apply_to(parser, None, environ)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                problems[command] = _apply_to(subparser, command, environ)
    return problems
