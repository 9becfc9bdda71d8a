"""How a job reads as a django.tasks TaskResult (pure mapping: no database, no worker)."""

from __future__ import annotations

import datetime

import pytest
from django.tasks import TaskResultStatus
from django.test import override_settings

from procrastinate_core.jobs import Job
from procrastinate_django import django_task_results
from procrastinate_django.django_task_results import UNKNOWN_WORKER, TaskCancelled
from tests.django.django_tasks_app import tasks

UTC = datetime.timezone.utc
T0 = datetime.datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
PAYLOAD = {"task": tasks.add.module_path, "args": [1, 2], "kwargs": {}, "backend": "default"}


def job(**fields: object) -> Job:
    base: dict[str, object] = {
        "id": 7,
        "queue": "default",
        "task_name": "procrastinate_django.django_tasks_runner.run_django_task",
        "status": "todo",
        "task_kwargs": PAYLOAD,
        "created_at": T0,
    }
    return Job(**{**base, **fields})  # type: ignore[arg-type]


def read(j: Job, events: list[dict[str, object]] | None = None):  # noqa: ANN201
    task = django_task_results.load_task(PAYLOAD, j)
    return django_task_results.task_result(task, j, PAYLOAD, events or [], "default")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("todo", TaskResultStatus.READY),
        ("doing", TaskResultStatus.RUNNING),
        ("succeeded", TaskResultStatus.SUCCESSFUL),
        ("failed", TaskResultStatus.FAILED),
        ("cancelled", TaskResultStatus.FAILED),
        ("aborted", TaskResultStatus.FAILED),
    ],
)
def test_every_job_status_has_a_task_status(status: str, expected: TaskResultStatus) -> None:
    assert read(job(status=status)).status == expected


def test_finished_at_only_for_final_statuses() -> None:
    # A failed attempt waiting for its retry keeps no finish time.
    assert read(job(status="todo", claims=1, finished_at=T0)).finished_at is None
    assert read(job(status="succeeded", claims=1, finished_at=T0)).finished_at == T0


def test_builtin_exception_types_get_an_importable_path() -> None:
    error = {"type": "KeyError", "message": "'x'", "traceback": "Traceback...\nKeyError: 'x'\n"}
    [task_error] = read(job(status="failed", claims=1, error=error)).errors
    assert task_error.exception_class_path == "builtins.KeyError"
    assert task_error.exception_class is KeyError
    assert task_error.traceback.endswith("KeyError: 'x'\n")


def test_aborted_without_error_reads_as_cancelled() -> None:
    [task_error] = read(job(status="aborted", claims=1, worker_id=3)).errors
    assert task_error.exception_class is TaskCancelled
    assert "job 7 was aborted" in task_error.traceback


def test_attempts_worker_ids_and_first_start_from_the_history() -> None:
    """Events written before the core's migration 0005 name no worker: unknown."""
    started = [
        {"type": "deferred", "at": T0},
        {"type": "started", "at": T0 + datetime.timedelta(seconds=1)},
        {"type": "recovered", "at": T0 + datetime.timedelta(seconds=9)},
        {"type": "started", "at": T0 + datetime.timedelta(seconds=10)},
    ]
    result = read(
        job(status="doing", claims=2, worker_id=42, started_at=T0 + datetime.timedelta(seconds=10)),
        started,
    )
    assert result.worker_ids == [UNKNOWN_WORKER, "42"] and result.attempts == 2
    assert result.started_at == T0 + datetime.timedelta(seconds=1)
    assert result.last_attempted_at == T0 + datetime.timedelta(seconds=10)


def test_recovered_job_forgot_its_worker() -> None:
    assert read(job(status="todo", claims=1, worker_id=None)).worker_ids == [UNKNOWN_WORKER]


def test_each_attempts_worker_comes_from_its_started_event() -> None:
    history = [
        {"type": "deferred", "attempt": 0, "at": T0, "worker_id": None},
        {"type": "started", "attempt": 1, "at": T0, "worker_id": 5},
        {"type": "recovered", "attempt": 1, "at": T0, "worker_id": 5},
        {"type": "started", "attempt": 2, "at": T0, "worker_id": 6},
        {"type": "deferred_for_retry", "attempt": 2, "at": T0, "worker_id": 6},
        {"type": "started", "attempt": 3, "at": T0, "worker_id": 8},
        {"type": "recovered", "attempt": 3, "at": T0, "worker_id": 8},
    ]
    # The job forgot worker 8 when it was recovered; its history did not.
    result = read(job(status="todo", claims=3, worker_id=None), history)
    assert result.worker_ids == ["5", "6", "8"]


def test_out_of_range_priority_set_by_hand_is_clamped_to_djangos_range() -> None:
    assert read(job(priority=5000)).task.priority == 100
    assert read(job(priority=-5000)).task.priority == -100


@override_settings(USE_TZ=False, TIME_ZONE="Europe/Paris")
def test_without_time_zones_run_after_is_naive_in_the_default_time_zone() -> None:
    naive = datetime.datetime(2030, 6, 1, 14, 0)
    aware = django_task_results.schedule_at(naive)
    assert aware is not None and aware.utcoffset() == datetime.timedelta(hours=2)
    assert read(job(scheduled_at=aware)).task.run_after == naive
