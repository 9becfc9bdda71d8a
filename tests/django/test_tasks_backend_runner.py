"""The runner of django.tasks jobs when a job's task cannot be found: clear errors, nothing lost."""

from __future__ import annotations

from typing import Any

import pytest
from django.tasks import TaskResultStatus, default_task_backend
from django.tasks.exceptions import InvalidTask

from procrastinate_django import app
from procrastinate_django.django_tasks_runner import RUNNER

pytestmark = pytest.mark.usefixtures("live_db")


def defer_runner_job(task_path: str) -> int:
    """A runner job for `task_path`, as ProcrastinateBackend would defer it."""
    payload: dict[str, Any] = {
        "task": task_path,
        "args": [1, 2],
        "kwargs": {},
        "backend": "default",
    }
    return app.configure_task(RUNNER).defer(**payload)


@pytest.mark.parametrize(
    ("task_path", "message"),
    [
        ("tests.django.no_such_module.gone", "which cannot be imported here"),
        ("tests.django.django_tasks_app.tasks.TaskRun", "names a ModelBase, not a Task"),
    ],
)
def test_a_job_whose_task_cannot_be_loaded_fails_naming_the_path(
    task_path: str, message: str
) -> None:
    job_id = defer_runner_job(task_path)
    app.run_worker(wait=False)
    [job] = app.job_manager.list_jobs(id=job_id)
    assert job.status == "failed"
    assert job.error["type"] == "django.tasks.exceptions.InvalidTask"
    assert f"job {job_id} runs django task {task_path!r}" in job.error["message"]
    assert message in job.error["message"]
    with pytest.raises(InvalidTask, match=message):
        default_task_backend.get_result(str(job_id))


def test_a_runner_job_deferred_by_name_runs_like_an_enqueued_task() -> None:
    job_id = defer_runner_job("tests.django.django_tasks_app.tasks.add")
    app.run_worker(wait=False)
    result = default_task_backend.get_result(str(job_id))
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3


@pytest.mark.parametrize(
    ("task_name", "exception"),
    [("exits", "SystemExit"), ("async_interrupts", "KeyboardInterrupt")],
)
def test_a_base_exception_is_the_tasks_failure_and_the_worker_goes_on(
    task_name: str, exception: str
) -> None:
    from django.tasks.signals import task_finished

    from tests.django.django_tasks_app import tasks

    finished: list[Any] = []

    def on_finished(sender: type, task_result: Any, **kwargs: Any) -> None:
        finished.append(task_result.status)

    poison = getattr(tasks, task_name)
    bad = poison.enqueue(3) if task_name == "exits" else poison.enqueue()
    good = tasks.add.enqueue(2, 2)
    task_finished.connect(on_finished)
    try:
        app.run_worker(wait=False)  # returns: the task's exception did not end the worker
    finally:
        task_finished.disconnect(on_finished)
    result = default_task_backend.get_result(bad.id)
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[-1].exception_class_path == f"builtins.{exception}"
    assert exception in result.errors[-1].traceback
    assert default_task_backend.get_result(good.id).return_value == 4
    assert TaskResultStatus.FAILED in finished
    [job] = app.job_manager.list_jobs(id=int(bad.id))
    assert job.status == "failed" and job.error["type"] == exception
