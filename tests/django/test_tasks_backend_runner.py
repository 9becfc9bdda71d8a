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
