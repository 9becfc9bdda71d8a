"""ProcrastinateBackend: Django's own task framework (django.tasks) on top of our queue.

    TASKS = {
        "default": {
            "BACKEND": "procrastinate_django.tasks_backend.ProcrastinateBackend",
            "QUEUES": ["default", "emails"],
        }
    }

`Task.enqueue()` defers one job of a native runner task through Django's
own connection (procrastinate_django.app), so inside `transaction.atomic()`
the job is rolled back with the transaction, exactly like `my_task.defer()`.
`manage.py procrastinate worker` runs the jobs; `get_result()` reads the job
back as a TaskResult. What maps to what: docs/django-tasks.md.
"""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued

from procrastinate_core import exceptions
from procrastinate_core.jobs import Job
from procrastinate_core.tasks import check_queue_name
from procrastinate_django import django_task_results, django_tasks_runner
from procrastinate_django.procrastinate_app import app

#: OPTIONS this backend understands (none yet: everything lives in PROCRASTINATE_* settings).
KNOWN_OPTIONS: frozenset[str] = frozenset()


def _job_id(result_id: Any) -> int:
    """The job id a result id names; TaskResultDoesNotExist if it cannot be one."""
    try:
        job_id = int(str(result_id))
    except ValueError:
        raise TaskResultDoesNotExist(
            f"{result_id!r} is not a result id of this backend (they are job ids: integers)"
        ) from None
    if not 0 < job_id < 2**63:  # job ids are positive bigints
        raise TaskResultDoesNotExist(f"{result_id!r} is not a result id of this backend")
    return job_id


def _history_needed(job: Job) -> bool:
    """Whether the job's history adds anything to its row: the first start, the worker and
    the error of earlier attempts, or the worker of an attempt whose job was recovered."""
    return job.claims > 1 or (job.claims == 1 and job.worker_id is None)


class ProcrastinateBackend(BaseTaskBackend):
    """django.tasks backend storing tasks as jobs in PostgreSQL and results on the jobs."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        unknown = set(self.options) - KNOWN_OPTIONS
        if unknown:
            raise InvalidTaskBackend(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {sorted(unknown)}; "
                f"{type(self).__name__} takes none: configure the queue with the "
                "PROCRASTINATE_* settings (database alias, JSON hooks, worker defaults)."
            )
        for queue in self.queues:
            try:
                check_queue_name(queue)
            except exceptions.ConfigurationError as exc:
                raise InvalidTaskBackend(f"TASKS[{alias!r}]['QUEUES']: {exc}") from None

    def validate_task(self, task: Task) -> None:
        """Django's rules (module-level function, context, priority, queues) plus the queue's."""
        super().validate_task(task)
        try:
            check_queue_name(task.queue_name)
        except exceptions.ConfigurationError as exc:
            raise InvalidTask(f"task {task.module_path!r}: {exc}") from None

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Defer the task's job in the caller's transaction;
        a READY TaskResult whose id is the job id."""
        self.validate_task(task)
        payload = django_task_results.job_payload(task, args, kwargs, app.connector.json_dumps)
        deferrer = app.configure_task(
            django_tasks_runner.runner_name(task),
            queue=task.queue_name,
            priority=task.priority,
            schedule_at=django_task_results.schedule_at(task.run_after),
        )
        job_id = deferrer.defer(**payload)
        # The database's clock, as get_result() reads it: enqueue(...) == get_result(id).
        # Read back in the caller's transaction, where the new row is visible.
        [job] = app.job_manager.list_jobs(id=job_id)
        result = TaskResult(
            task=task,
            id=str(job_id),
            status=TaskResultStatus.READY,
            enqueued_at=job.created_at,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=payload["args"],
            kwargs=payload["kwargs"],
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    # aenqueue: BaseTaskBackend runs enqueue() in Django's thread-sensitive thread, the
    # one the async ORM uses, so an async defer shares its connection and transaction.

    def _result(
        self,
        jobs: list[Job],
        events: list[dict[str, Any]],
        result_id: Any,
        error_history: list[dict[str, Any]] | None = None,
    ) -> TaskResult:
        if not jobs:
            raise TaskResultDoesNotExist(
                f"no job with id {result_id!r} (it never existed, was rolled back, or was "
                "deleted: workers with delete_jobs, the admin, or delete_old_jobs)"
            )
        job = jobs[0]
        if job.task_name not in (django_tasks_runner.RUNNER, django_tasks_runner.RUNNER_ASYNC):
            raise TaskResultDoesNotExist(
                f"job {job.id} runs the native task {job.task_name!r}, not a django.tasks task; "
                f"read it with app.job_manager.list_jobs(id={job.id}) (result, error)"
            )
        payload = job.task_kwargs
        task = django_task_results.load_task(payload, job)
        return django_task_results.task_result(
            task, job, payload, events, self.alias, error_history or ()
        )

    def get_result(self, result_id: Any) -> TaskResult:
        """The task's current state, read from its job; TaskResultDoesNotExist for an unknown id."""
        job_id = _job_id(result_id)
        jobs = app.job_manager.list_jobs(id=job_id)
        needed = bool(jobs) and _history_needed(jobs[0])
        events = app.job_manager.list_job_events(job_id) if needed else []
        errors = app.job_manager.list_job_errors(job_id) if needed else []
        return self._result(jobs, events, result_id, errors)

    async def aget_result(self, result_id: Any) -> TaskResult:
        job_id = _job_id(result_id)
        jobs = await app.job_manager.list_jobs_async(id=job_id)
        needed = bool(jobs) and _history_needed(jobs[0])
        events = await app.job_manager.list_job_events_async(job_id) if needed else []
        errors = await app.job_manager.list_job_errors_async(job_id) if needed else []
        return self._result(jobs, events, result_id, errors)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """The queue must be installed for tasks to be stored and run."""
        from django.apps import apps

        messages: list[checks.CheckMessage] = []
        if not apps.is_installed("procrastinate_django"):
            messages.append(
                checks.Error(
                    f"TASKS[{self.alias!r}] uses {type(self).__name__}, but "
                    "procrastinate_django is not in INSTALLED_APPS.",
                    hint="Add 'procrastinate_django' to INSTALLED_APPS and run migrate.",
                    id="procrastinate_django.E101",
                )
            )
        return messages
