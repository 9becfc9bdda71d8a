"""Turning job arguments and results into JSON text PostgreSQL's jsonb accepts, or a clear error.

PostgreSQL rejects NaN/Infinity and the NUL character in jsonb, and the default
encoder rejects sets, datetimes, bytes... We check all of it client-side, at
defer time, so a bad argument never reaches the database and never leaves the
caller's transaction aborted.
"""

from __future__ import annotations

import json
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
    if "\\u0000" in text or "\x00" in text:
        return None, "it contains the NUL character (\\x00), which PostgreSQL's jsonb cannot store"
    if "NaN" in text or "Infinity" in text:
        try:
            json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            return None, f"it contains {exc} (not valid JSON; PostgreSQL rejects it)"
    return text, None


def dumps_checked(values: Mapping[str, Any], json_dumps: JsonDumps, *, what: str) -> str:
    """Encode a mapping of arguments, naming the first argument that cannot be stored."""
    text, problem = _encode(values, json_dumps)
    if text is not None:
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
    return {
        "queue_name": job.queue,
        "task_name": job.task_name,
        "priority": job.priority,
        "lock": job.lock,
        "queueing_lock": job.queueing_lock,
        "scheduled_at": job.scheduled_at.isoformat() if job.scheduled_at else None,
    }


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
        key = (job.queue, job.task_name, job.priority, job.lock, job.queueing_lock, job.scheduled_at)
        text = fields_text.get(key)
        if text is None:
            text = fields_text[key] = _fields_text(job)
        parts.append('{"args":' + args + "," + text)
    return "[" + ",".join(parts) + "]"


def template_payload(template: Job, args_json: Sequence[str]) -> str:
    """job_defer_many's array for jobs that differ only by their (encoded) arguments."""
    text = "," + _fields_text(template)
    return "[" + ",".join(['{"args":' + args + text for args in args_json]) + "]"


def _fields_text(job: Job) -> str:
    """A job's fields as the tail of a JSON object (`"queue_name": ..., ...}`), to follow its args."""
    return json.dumps(_job_fields(job))[1:]
