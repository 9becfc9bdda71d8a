"""The native tasks that run django.tasks functions in our worker, with Django's task signals.

Every `django.tasks` task enqueued through ProcrastinateBackend is one job of
`run_django_task` (sync functions, run in the worker's threads like any sync
task) or `run_django_task_async` (coroutines, run on the worker's loop). The
runner imports the function by its module path, builds the TaskContext when
the task takes one, sends `task_started`, calls it, sends `task_finished`
(from inside the exception handler on failure, as Django's own backends do),
and returns the JSON return value, which the worker stores on the job.

The task names are this module's dotted paths, so a worker that has not
imported this module yet still finds them (it imports the module a task name
points to); procrastinate_django's AppConfig imports it anyway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from procrastinate_core import serialization
from procrastinate_core.job_context import JobContext
from procrastinate_django import django_task_results
from procrastinate_django.procrastinate_app import app

logger = logging.getLogger(__name__)

RUNNER = "procrastinate_django.django_tasks_runner.run_django_task"
RUNNER_ASYNC = "procrastinate_django.django_tasks_runner.run_django_task_async"


#: A django task's return value that cannot be stored as JSON fails the run with a plain
#: TypeError, as Django's own backends report it (their `normalize_json` raises TypeError),
#: so `errors[0].exception_class is TypeError` holds here too. Kept as a name for imports.
ReturnValueNotJSON = TypeError


def runner_name(task: Task) -> str:
    """Which runner a django task's jobs use: coroutines run on the loop, the rest in threads."""
    from inspect import iscoroutinefunction

    return RUNNER_ASYNC if iscoroutinefunction(task.func) else RUNNER


def _running(
    context: JobContext, payload: dict[str, Any], events: list[dict[str, Any]]
) -> TaskResult:
    task = django_task_results.load_task(payload, context.job)
    alias = str(payload.get("backend") or task.backend)
    return django_task_results.task_result(task, context.job, payload, events, alias)


def _call_args(result: TaskResult, payload: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    args = list(payload.get("args") or [])
    if result.task.takes_context:
        args.insert(0, TaskContext(task_result=result))
    return args, dict(payload.get("kwargs") or {})


def _succeeded(result: TaskResult, value: Any) -> Any:
    """The JSON form of `value`, set on `result` (now SUCCESSFUL); raises if it is not JSON."""
    try:
        stored = normalize_json(value)
    except (TypeError, ValueError) as exc:
        raise ReturnValueNotJSON(
            f"django task {result.task.module_path!r} returned a {type(value).__name__}, which "
            f"cannot be stored as JSON ({exc}); return JSON-compatible values "
            "(str, int, finite float, bool, None, list, dict)."
        ) from exc
    if stored is not None and serialization.dumps_result(stored, app.connector.json_dumps) is None:
        raise ReturnValueNotJSON(
            f"django task {result.task.module_path!r} returned a value PostgreSQL's jsonb "
            "cannot store (NaN, Infinity or the NUL character); return plain JSON values."
        )
    object.__setattr__(result, "_return_value", stored)
    _finish(result, TaskResultStatus.SUCCESSFUL)
    return stored


def _failed(result: TaskResult, exc: BaseException) -> None:
    result.errors.append(django_task_results.task_error(exc))
    _finish(result, TaskResultStatus.FAILED)


def _finish(result: TaskResult, status: TaskResultStatus) -> None:
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", timezone.now())


def _events_needed(context: JobContext) -> bool:
    """Earlier attempts' start times come from the job's history; a first attempt needs none."""
    return context.job.claims > 1


@app.task(name=RUNNER, pass_context=True)
def run_django_task(context: JobContext, **payload: Any) -> Any:
    """Run a sync django.tasks function for its job; its return value is the job's result."""
    events = (
        context.app.job_manager.list_job_events(int(context.job.id or 0))
        if _events_needed(context)
        else []
    )
    result = _running(context, payload, events)
    sender = type(result.task.get_backend())
    task_started.send(sender=sender, task_result=result)
    args, kwargs = _call_args(result, payload)
    try:
        value = result.task.call(*args, **kwargs)
        stored = _succeeded(result, value)
    except asyncio.CancelledError:  # aborted or stopping: not a failure of the task
        raise
    except BaseException as exc:  # SystemExit too: the worker records it as this job's failure
        _failed(result, exc)
        task_finished.send(sender=sender, task_result=result)
        raise
    task_finished.send(sender=sender, task_result=result)
    return stored


@app.task(name=RUNNER_ASYNC, pass_context=True)
async def run_django_task_async(context: JobContext, **payload: Any) -> Any:
    """Run an async django.tasks function for its job, on the worker's event loop."""
    events = (
        await context.app.job_manager.list_job_events_async(int(context.job.id or 0))
        if _events_needed(context)
        else []
    )
    result = _running(context, payload, events)
    sender = type(result.task.get_backend())
    await task_started.asend(sender=sender, task_result=result)
    args, kwargs = _call_args(result, payload)
    try:
        value = await result.task.acall(*args, **kwargs)
        stored = _succeeded(result, value)
    except asyncio.CancelledError:  # aborted or stopping: not a failure of the task
        raise
    except BaseException as exc:  # SystemExit too: the worker records it as this job's failure
        _failed(result, exc)
        await task_finished.asend(sender=sender, task_result=result)
        raise
    await task_finished.asend(sender=sender, task_result=result)
    return stored
