"""Log output for the CLI: `-v` levels and one structured line per record.

A line reads `2026-11-22T03:40:28Z INFO procrastinate_core.worker Job 12 succeeded
job_id=12 task_name=shop.index ...`: the message for people, then the record's
`extra` fields as key=value for grep and log shippers (`--log-format=json` gives
one JSON object per line instead). Any other `--log-format` is a logging format
string, as in procrastinate (`--log-format "%(levelname)s %(message)s"`), in the
style `--log-format-style` names (`%`, `{` or `$`).

The CLI can be called in-process (tests, `manage.py procrastinate`), so the
handler it installs is removed again when the command ends.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

#: -v count -> level of the procrastinate_core loggers.
VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
LOG_FORMATS = ("text", "json")
LOG_FORMAT_STYLES = ("%", "{", "$")

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD_ATTRIBUTES = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed in `extra=`."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRIBUTES}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)
    return text


class StructuredFormatter(logging.Formatter):
    """`time LEVEL logger message key=value...`, or one JSON object per record."""

    def __init__(self, log_format: str = "text") -> None:
        super().__init__()
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log format {log_format!r}: expected one of {LOG_FORMATS}")
        self.log_format = log_format

    def format(self, record: logging.LogRecord) -> str:
        fields = extra_fields(record)
        message = record.getMessage()
        if self.log_format == "json":
            payload = {
                "time": _timestamp(record),
                "level": record.levelname,
                "logger": record.name,
                "message": message,
                **fields,
            }
            if record.exc_info:
                payload["exception"] = self.formatException(record.exc_info)
            return json.dumps(payload, default=str)
        parts = [_timestamp(record), record.levelname, record.name, message]
        parts += [f"{key}={_text_value(value)}" for key, value in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def make_formatter(log_format: str = "text", style: str = "%") -> logging.Formatter:
    """Our structured formatter for `text`/`json`, else a standard one for a format string.

    Raises ValueError naming the problem when the format string does not fit its style.
    """
    if log_format in LOG_FORMATS:
        return StructuredFormatter(log_format)
    if style not in LOG_FORMAT_STYLES:
        raise ValueError(f"log format style {style!r}: expected one of {LOG_FORMAT_STYLES}")
    try:
        return logging.Formatter(log_format, style=style)  # type: ignore[arg-type]
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"--log-format {log_format!r} is neither 'text', 'json' nor a valid logging "
            f"format string in style {style!r} ({exc}); e.g. '%(asctime)s %(levelname)s "
            "%(name)s %(message)s', or '{levelname} {message}' with --log-format-style '{'"
        ) from None


@contextlib.contextmanager
def cli_logging(verbosity: int, log_format: str = "text", style: str = "%") -> Iterator[None]:
    """Send log records to stderr at the level `-v` asks for, for the duration of a command.

    When the root logger already has handlers (Django's LOGGING, an embedding
    program), records go there and only the procrastinate_core level changes.
    """
    level = VERBOSITY_LEVELS[min(verbosity, max(VERBOSITY_LEVELS))]
    root = logging.getLogger()
    ours = logging.getLogger("procrastinate_core")
    saved_root_level, saved_our_level = root.level, ours.level
    handler: logging.Handler | None = None
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(make_formatter(log_format, style))
        root.addHandler(handler)
        root.setLevel(level)
    ours.setLevel(level)
    try:
        yield
    finally:
        ours.setLevel(saved_our_level)
        if handler is not None:
            root.removeHandler(handler)
            root.setLevel(saved_root_level)
