"""Turning job arguments and results into JSON text PostgreSQL's jsonb accepts, or a clear error.

PostgreSQL rejects NaN/Infinity and the NUL character in jsonb, and the default
encoder rejects sets, datetimes, bytes... We check all of it client-side, at
defer time, so a bad argument never reaches the database and never leaves the
caller's transaction aborted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from procrastinate_core import exceptions

if TYPE_CHECKING:
    from procrastinate_core.jobs import Job

JsonDumps = Callable[[Any], str]
JsonLoads = Callable[[str], Any]


def _reject_constant(token: str) -> Any:
    raise ValueError(token)


def _encode(value: Any, json_dumps: JsonDumps) -> tuple[str | None, str | None]:
    """(JSON text, None) if `value` can be stored as jsonb, else (None, why not)."""
    try:
        text = json_dumps(value)
    except (TypeError, ValueError, OverflowError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if not isinstance(text, str):
        return None, f"json_dumps returned {type(text).__name__}, expected str"
    problem = _unencodable(text)
    if problem is not None:
        return None, problem
    if "\\u0000" in text or "\x00" in text:
        return None, "it contains the NUL character (\\x00), which PostgreSQL's jsonb cannot store"
    if "NaN" in text or "Infinity" in text:
        try:
            json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            return None, f"it contains {exc} (not valid JSON; PostgreSQL rejects it)"
    return text, None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _unencodable(text: str) -> str | None:
    """Why PostgreSQL would refuse this JSON text's characters (lone surrogates), or None.

    A lone surrogate cannot be encoded in UTF-8 (json_dumps with ensure_ascii=False
    leaves it raw) nor stored by jsonb (the default encoder escapes it as \\udXXX).
    Escapes of surrogates are rare, so the full walk runs only when one is seen.
    """
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"it contains a lone surrogate ({text[exc.start]!r}), which UTF-8 cannot encode"
    if _SURROGATE_ESCAPE.search(text) is None:
        return None
    try:
        decoded = json.loads(text)
    except ValueError:
        return None  # not ours to judge here; PostgreSQL will name the problem
    bad = _find_surrogate(decoded)
    if bad is None:
        return None
    return f"it contains a lone surrogate ({bad!r}), which PostgreSQL's jsonb cannot store"


def _find_surrogate(value: Any) -> str | None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return item[exc.start]
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def text_bytes(text: str) -> int:
    """Size of JSON text in UTF-8 bytes (ASCII text, the default encoder's, costs no copy)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def dumps_checked(
    values: Mapping[str, Any], json_dumps: JsonDumps, *, what: str, max_bytes: int | None = None
) -> str:
    """Encode a mapping of arguments, naming the first argument that cannot be stored.

    With `max_bytes`, arguments whose JSON text is larger are refused here, before
    anything is sent (App(max_payload_bytes=...)).
    """
    text, problem = _encode(values, json_dumps)
    if text is not None:
        if max_bytes is not None:
            _check_size(text, max_bytes, what=what)
        return text
    for key, value in values.items():
        _, key_problem = _encode(value, json_dumps)
        if key_problem is not None:
            raise exceptions.ArgumentSerializationError(
                f"{what}: argument {key!r} of type {type(value).__name__} cannot be "
                f"stored as JSON ({key_problem}). Pass JSON-compatible values "
                "(str, int, finite float, bool, None, list, dict), or give the "
                "connector json_dumps=/json_loads= that handle this type."
            )
    raise exceptions.ArgumentSerializationError(
        f"{what}: the arguments cannot be stored as JSON ({problem})."
    )


def _check_size(text: str, max_bytes: int, *, what: str) -> None:
    size = text_bytes(text)
    if size > max_bytes:
        raise exceptions.ArgumentSerializationError(
            f"{what}: the arguments are {size} bytes of JSON, over the limit of {max_bytes} "
            "bytes (App(max_payload_bytes=...); PostgreSQL's jsonb cannot hold more than "
            "255 MiB). Store large data elsewhere (a file, a table, object storage) and pass "
            "a reference to it, or raise max_payload_bytes."
        )


def dumps_result(value: Any, json_dumps: JsonDumps) -> str | None:
    """A task's return value as JSON text, or None when it cannot be stored as JSON.

    A result that does not encode must not turn a successful job into a failed
    one, so the caller logs and stores nothing instead of raising.
    """
    if value is None:
        return None
    text, _ = _encode(value, json_dumps)
    return text


def _job_fields(job: Job) -> dict[str, Any]:
    """A job's row for job_defer_many, without its arguments."""
    fields: dict[str, Any] = {
        "queue_name": job.queue,
        "task_name": job.task_name,
        "priority": job.priority,
        "lock": job.lock,
        "queueing_lock": job.queueing_lock,
        "scheduled_at": job.scheduled_at.isoformat() if job.scheduled_at else None,
        "schedule_in_seconds": job.schedule_in_seconds,
    }
    if job.trace_context is not None:  # only when defers are traced (otel.py): no bytes otherwise
        fields["trace_context"] = job.trace_context
    return fields


def defer_payload(
    jobs: Sequence[Job], args_json: Sequence[str] | None, json_dumps: JsonDumps
) -> str:
    """The JSON array job_defer_many reads.

    With `args_json` (each job's arguments already encoded and checked by the
    deferrer), the texts are spliced in rather than encoded a second time; the
    other fields are plain strings, ints and nulls, which the standard encoder
    writes as valid JSON whatever the connector's json_dumps.
    """
    if args_json is None:
        return json_dumps([{**_job_fields(job), "args": job.task_kwargs} for job in jobs])
    if len(args_json) != len(jobs):
        raise ValueError(f"{len(args_json)} argument texts for {len(jobs)} jobs")
    # The jobs of a batch usually share their template: encode its fields once.
    fields_text: dict[tuple[Any, ...], str] = {}
    parts = []
    for job, args in zip(jobs, args_json, strict=True):
        key = (
            job.queue,
            job.task_name,
            job.priority,
            job.lock,
            job.queueing_lock,
            job.scheduled_at,
            job.schedule_in_seconds,
            id(job.trace_context),  # a batch's jobs share their template's dict
        )
        text = fields_text.get(key)
        if text is None:
            text = fields_text[key] = _fields_text(job)
        parts.append('{"args":' + args + "," + text)
    return "[" + ",".join(parts) + "]"


def chunked(texts: Sequence[str], budget: int) -> list[Sequence[str]]:
    """`texts` cut in runs whose total size stays within `budget` bytes (a longer text alone)."""
    chunks: list[Sequence[str]] = []
    start, size = 0, 0
    for index, text in enumerate(texts):
        length = text_bytes(text)
        if index > start and size + length > budget:
            chunks.append(texts[start:index])
            start, size = index, 0
        size += length
    chunks.append(texts[start:])
    return chunks


def template_payload(template: Job, args_json: Sequence[str]) -> str:
    """job_defer_many's array for jobs that differ only by their (encoded) arguments."""
    text = "," + _fields_text(template)
    return "[" + ",".join(['{"args":' + args + text for args in args_json]) + "]"


def _fields_text(job: Job) -> str:
    """A job's fields as the tail of a JSON object (`"queue_name": ..., ...}`), to follow its
    args."""
    return json.dumps(_job_fields(job))[1:]
