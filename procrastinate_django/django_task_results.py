"""Jobs seen as django.tasks: the job payload of a Django task, and a job read back as a TaskResult.

A `django.tasks` task is queued as one job of a native runner task (see
django_tasks_runner.py) whose arguments are the payload built here:
`{"task": module path, "args": [...], "kwargs": {...}, "backend": alias}`.
Queue, priority and run_after live on the job itself (queue_name, priority,
scheduled_at), so the queue orders and schedules these jobs like any other.

Reading a job back (`task_result`) is a pure mapping, shared by the backend's
get_result and by the runner that builds the TaskContext in the worker.
"""

from __future__ import annotations

import datetime
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, TaskError
from django.tasks.exceptions import InvalidTask
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from procrastinate_core import exceptions, serialization
from procrastinate_core.jobs import Job, Status

#: A worker id we cannot know: only the last attempt's worker is kept on the job.
UNKNOWN_WORKER = "unknown"

_STATUSES = {
    Status.TODO: TaskResultStatus.READY,
    Status.DOING: TaskResultStatus.RUNNING,
    Status.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    Status.FAILED: TaskResultStatus.FAILED,
    Status.CANCELLED: TaskResultStatus.FAILED,
    Status.ABORTED: TaskResultStatus.FAILED,
}


class TaskCancelled(Exception):
    """The job was cancelled (or aborted) through the queue before it finished.

    The exception class of the TaskError a cancelled job's result carries, so
    `result.errors[0].exception_class` says why a FAILED task never ran.
    """


def exception_class_path(exc: BaseException) -> str:
    """`module.QualName` of an exception's class, as TaskError.exception_class_path wants."""
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def task_error(exc: BaseException) -> TaskError:
    """A TaskError for an exception raised now (in the worker, before it is recorded)."""
    return TaskError(
        exception_class_path=exception_class_path(exc),
        traceback="".join(traceback.format_exception(exc)),
    )


def _normalized(value: Any, where: str, task_path: str) -> Any:
    try:
        return normalize_json(value)
    except (TypeError, ValueError) as exc:
        raise exceptions.ArgumentSerializationError(
            f"cannot enqueue django task {task_path!r}: {where} of type "
            f"{type(value).__name__} cannot be stored as JSON ({exc}). Pass JSON-compatible "
            "values (str, int, finite float, bool, None, list, dict)."
        ) from exc


def job_payload(
    task: Task, args: Sequence[Any], kwargs: Mapping[str, Any], json_dumps: serialization.JsonDumps
) -> dict[str, Any]:
    """The runner job's arguments for `task(*args, **kwargs)`; raises naming a non-JSON argument."""
    norm_args = [_normalized(value, f"args[{i}]", task.module_path) for i, value in enumerate(args)]
    norm_kwargs = {
        str(key): _normalized(value, f"argument {key!r}", task.module_path)
        for key, value in kwargs.items()
    }
    # normalize_json lets NaN, Infinity and NUL through; PostgreSQL's jsonb does not.
    serialization.dumps_checked(
        {**{f"args[{i}]": v for i, v in enumerate(norm_args)}, **norm_kwargs},
        json_dumps,
        what=f"cannot enqueue django task {task.module_path!r}",
    )
    return {
        "task": task.module_path,
        "args": norm_args,
        "kwargs": norm_kwargs,
        "backend": task.backend,
    }


def schedule_at(run_after: datetime.datetime | None) -> datetime.datetime | None:
    """run_after as an aware datetime (naive ones are in Django's time zone when USE_TZ=False)."""
    if run_after is None or timezone.is_aware(run_after):
        return run_after
    return timezone.make_aware(run_after, timezone.get_default_timezone())


def load_task(payload: Mapping[str, Any], job: Job) -> Task:
    """The django Task a job runs, as it was enqueued (queue, priority, run_after, backend).

    Raises InvalidTask naming the job and the path when the function is gone.
    """
    path = payload.get("task")
    try:
        found = import_string(str(path))
    except ImportError as exc:
        raise InvalidTask(
            f"job {job.id} runs django task {path!r}, which cannot be imported here ({exc}). "
            "Deploy the code that declares it (a module-level function decorated with "
            "@django.tasks.task), or cancel the job."
        ) from exc
    if not isinstance(found, Task):
        raise InvalidTask(
            f"job {job.id} runs django task {path!r}, but that path names a "
            f"{type(found).__name__}, not a Task; decorate the function with "
            "@django.tasks.task."
        )
    scheduled = job.scheduled_at
    if scheduled is not None and not settings.USE_TZ and timezone.is_aware(scheduled):
        scheduled = timezone.make_naive(scheduled, timezone.get_default_timezone())
    return replace(
        found,
        backend=str(payload.get("backend") or found.backend),
        queue_name=job.queue,
        priority=min(max(job.priority, TASK_MIN_PRIORITY), TASK_MAX_PRIORITY),
        run_after=scheduled,
    )


def _task_error(error: Mapping[str, Any]) -> TaskError:
    kind = str(error.get("type") or "Exception")
    path = kind if "." in kind else f"builtins.{kind}"
    return TaskError(exception_class_path=path, traceback=str(error.get("traceback") or ""))


def _stored_errors(job: Job, history: Sequence[Mapping[str, Any]] = ()) -> list[TaskError]:
    """The error of each execution, in order (Django: the errors "raised as part of each
    execution"): the job's error history when read, else its last error."""
    if history:
        errors = [_task_error(entry) for entry in history]
        if job.status in (Status.CANCELLED, Status.ABORTED) and not job.error:
            errors.extend(_stored_errors(job))
        return errors
    if job.error:
        return [_task_error(job.error)]
    if job.status in (Status.CANCELLED, Status.ABORTED):
        reason = f"job {job.id} was {job.status} through the queue (admin, job manager or CLI)"
        return [
            TaskError(
                exception_class_path=f"{TaskCancelled.__module__}.{TaskCancelled.__qualname__}",
                traceback=f"{TaskCancelled.__module__}.TaskCancelled: {reason}\n",
            )
        ]
    return []


def _first_start(job: Job, events: Iterable[Mapping[str, Any]]) -> datetime.datetime | None:
    starts = [event["at"] for event in events if event.get("type") == "started"]
    return min(starts) if starts else job.started_at


def worker_ids(job: Job, events: Iterable[Mapping[str, Any]] = ()) -> list[str]:
    """One id per attempt: the worker of each attempt's "started" event, the job's own
    worker for its latest attempt, UNKNOWN_WORKER where neither says (history not
    read, or written before the core's migration 0005 gave events a worker)."""
    if job.claims <= 0:
        return []
    ids = [UNKNOWN_WORKER] * job.claims
    for event in events:
        attempt, worker = event.get("attempt", 0), event.get("worker_id")
        if event.get("type") == "started" and worker is not None and 1 <= attempt <= job.claims:
            ids[attempt - 1] = str(worker)
    if job.worker_id is not None:
        ids[-1] = str(job.worker_id)
    return ids


def task_result(
    task: Task,
    job: Job,
    payload: Mapping[str, Any],
    events: Iterable[Mapping[str, Any]],
    alias: str,
    error_history: Sequence[Mapping[str, Any]] = (),
) -> TaskResult:
    """The TaskResult of a job: status, return value, errors, attempts and timestamps.

    `error_history` (job_manager.list_job_errors) gives the error of every attempt;
    without it only the last error is known.
    """
    events = list(events)  # read twice
    status = _STATUSES[Status(job.status)]
    finished = Status(job.status).is_final
    result = TaskResult(
        task=task,
        id=str(job.id),
        status=status,
        enqueued_at=job.created_at,
        started_at=_first_start(job, events) if job.claims else None,
        finished_at=job.finished_at if finished else None,
        last_attempted_at=job.started_at if job.claims else None,
        args=list(payload.get("args") or []),
        kwargs=dict(payload.get("kwargs") or {}),
        backend=alias,
        errors=_stored_errors(job, error_history),
        worker_ids=worker_ids(job, events),
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", job.result)
    return result
