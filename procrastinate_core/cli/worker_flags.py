"""The `worker` subcommand's flags, generated from the WorkerOptions dataclass.

Each field of WorkerOptions becomes one flag (`fetch_job_polling_interval` ->
`--fetch-job-polling-interval`), typed after the field's annotation, with the
field's `#:` comment as help text and its default quoted from the dataclass.
Nothing here restates a default: flags that are not given are not passed, so
`App(worker_defaults=...)` and then WorkerOptions decide. The table below only
holds what a dataclass cannot say: short flags and the historical spellings
of procrastinate's CLI (`--one-shot`, `--no-signal-handlers`).
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import enum
import importlib
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from procrastinate_core import options
from procrastinate_core.cli import environment


@dataclasses.dataclass(frozen=True)
class FlagSpelling:
    """How one option is written on the command line, when not just `--option-name`."""

    short: str | None = None
    true_flag: str | None = None  # booleans: the flag that sets True
    false_flag: str | None = None  # booleans: the flag that sets False
    metavar: str | None = None


SPELLINGS: dict[str, FlagSpelling] = {
    "queues": FlagSpelling(short="-q", metavar="QUEUE[,QUEUE...]"),
    "name": FlagSpelling(short="-n"),
    "concurrency": FlagSpelling(short="-c"),
    "fetch_job_polling_interval": FlagSpelling(short="-p"),
    "abort_job_polling_interval": FlagSpelling(short="-a"),
    "listen_notify": FlagSpelling(short="-l"),
    "wait": FlagSpelling(short="-w", true_flag="--wait", false_flag="--one-shot"),
    "install_signal_handlers": FlagSpelling(
        true_flag="--signal-handlers", false_flag="--no-signal-handlers"
    ),
    "additional_context": FlagSpelling(metavar="JSON_OBJECT"),
    "worker_middleware": FlagSpelling(metavar="DOTTED.PATH"),
    "task_middleware": FlagSpelling(metavar="DOTTED.PATH"),
}


def field_help() -> dict[str, str]:
    """The `#:` comment above each WorkerOptions field (the help text of its flag)."""
    try:
        source = inspect.getsource(options.WorkerOptions)
    except (OSError, TypeError):  # no source shipped: flags still work, without help
        return {}
    helps: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", stripped)
        if match and pending:
            helps[match.group(1)] = " ".join(pending)
        pending = []
    return helps


def _comma_list(value: str) -> tuple[str, ...]:
    """Queue names; an empty (or blank) value means every queue, as in procrastinate."""
    if not value.strip():
        return ()
    names = tuple(part.strip() for part in value.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected comma-separated queue names, e.g. 'emails,reports'"
        )
    return names


def _json_object(value: str) -> dict[str, Any]:
    try:
        loaded = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not valid JSON ({exc})") from None
    if not isinstance(loaded, dict):
        raise argparse.ArgumentTypeError(
            f'{value!r}: expected a JSON object such as \'{{"key": "value"}}\''
        )
    return loaded


def _dotted_object(value: str) -> Any:
    module_path, _, attribute = value.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_path), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(
            f"cannot import {value!r} ({type(exc).__name__}: {exc}); expected "
            "'package.module.callable'"
        ) from None


def _typed(name: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    convert.__name__ = name  # argparse names the converter in "invalid X value" messages
    return convert


def _float_or_none(value: str) -> float | None:
    return None if value.lower() in ("none", "") else float(value)


def _converter(annotation: Any) -> tuple[Callable[[str], Any] | None, dict[str, Any]]:
    """(converter, extra add_argument kwargs) for a field's type; None for booleans."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    nullable = type(None) in members
    core = next((m for m in members if m is not type(None)), annotation)
    origin = typing.get_origin(core)
    if core is bool:
        return None, {}
    if origin is tuple:
        if typing.get_args(core)[0] is str:
            return _typed("comma-separated list", _comma_list), {}
        return _typed("dotted path", _dotted_object), {"action": environment.AppendOverDefault}
    if origin is collections.abc.Mapping:
        return _typed("JSON object", _json_object), {}
    if isinstance(core, type) and issubclass(core, enum.Enum):
        values = [member.value for member in core]
        return str, {"choices": values, "metavar": "{" + ",".join(values) + "}"}
    if core is float and nullable:
        return _typed("number or 'none'", _float_or_none), {}
    return core, {}


_METAVARS: dict[Any, str] = {int: "N", float: "SECONDS", _float_or_none: "SECONDS", str: "NAME"}


def variable(field_name: str) -> str:
    """A worker option's variable: PROCRASTINATE_WORKER_ and the field's name, whatever the flag's
    spelling (`--one-shot` sets PROCRASTINATE_WORKER_WAIT)."""
    return f"{environment.PREFIX}_WORKER_{field_name.upper()}"


def add_worker_flags(parser: environment.Parser) -> None:
    """One flag per WorkerOptions field; values land in `args.worker_options` (only those given)."""
    helps = field_help()
    hints = typing.get_type_hints(options.WorkerOptions)
    group = parser.add_argument_group(
        "worker options",
        "Unset options come from App(worker_defaults=...), then the built-in defaults.",
    )
    for field in options.WORKER_OPTIONS:
        spelling = SPELLINGS.get(field.name, FlagSpelling())
        long_flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else None
        if isinstance(default, enum.Enum):
            default = default.value
        help_text = f"{helps.get(field.name, field.name)} (default: {default!r})"
        dest = f"worker_option:{field.name}"
        convert, extra = _converter(hints[field.name])
        if convert is None:
            true_flag = spelling.true_flag or long_flag
            false_flag = spelling.false_flag or "--no-" + long_flag[2:]
            true_flags = [f for f in (spelling.short, true_flag) if f]
            for flags, env, action, text in (
                (true_flags, variable(field.name), "store_true", help_text),
                ([false_flag], None, "store_false", f"the opposite of {true_flag}"),
            ):
                environment.add_option(
                    parser,
                    *flags,
                    env=env,
                    group=group,
                    dest=dest,
                    action=action,
                    default=argparse.SUPPRESS,
                    help=text,
                )
            continue
        flags = [f for f in (spelling.short, long_flag) if f]
        kwargs: dict[str, Any] = {
            "dest": dest,
            "type": convert,
            "default": argparse.SUPPRESS,
            "help": help_text,
        }
        kwargs["metavar"] = spelling.metavar or _METAVARS.get(convert, field.name.upper())
        kwargs.update(extra)
        environment.add_option(parser, *flags, env=variable(field.name), group=group, **kwargs)


def worker_options_from(args: argparse.Namespace) -> dict[str, Any]:
    """The worker options given on the command line, keyed by WorkerOptions field name."""
    prefix = "worker_option:"
    return {
        key[len(prefix) :]: value for key, value in vars(args).items() if key.startswith(prefix)
    }
