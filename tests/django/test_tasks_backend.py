"""django.tasks through Django's public API, on ProcrastinateBackend, real PostgreSQL and a
real worker.

The worker is our own (procrastinate_django.app.run_worker(wait=False)): it runs
every job it can, then stops. Nothing here touches the backend's internals.
"""

from __future__ import annotations

import datetime
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.tasks import TaskResultStatus, default_task_backend, task_backends
from django.tasks.exceptions import (
    InvalidTask,
    InvalidTaskBackend,
    TaskResultDoesNotExist,
    TaskResultMismatch,
)
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.test import override_settings
from django.utils import timezone

from procrastinate_django import app
from tests.django.django_tasks_app import tasks
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

#: Committed data, as a worker sees it (validation tests need no database).
needs_db = pytest.mark.usefixtures("live_db")


def run_worker(**options: Any) -> None:
    """Run our worker until no job is left (what `manage.py procrastinate worker --one-shot`
    does)."""
    app.run_worker(wait=False, concurrency=1, **options)


async def run_worker_async(**options: Any) -> None:
    await app.run_worker_async(wait=False, concurrency=1, **options)


# -- configuration and validation ---------------------------------------------


def test_backend_is_selected_from_tasks_setting_with_its_features() -> None:
    backend = task_backends["default"]
    assert type(backend).__name__ == "ProcrastinateBackend"
    assert default_task_backend.supports_defer
    assert default_task_backend.supports_async_task
    assert default_task_backend.supports_get_result
    assert default_task_backend.supports_priority
    assert backend.queues == {"default", "emails", "reports"}
    assert backend.check() == []


def test_queue_not_in_queues_is_invalid() -> None:
    with pytest.raises(InvalidTask, match="Queue 'nowhere' is not valid for backend"):
        tasks.add.using(queue_name="nowhere")


@pytest.mark.parametrize("priority", [101, -101])
def test_priority_out_of_range_is_invalid(priority: int) -> None:
    with pytest.raises(InvalidTask, match="priority must be a whole number between -100 and 100"):
        tasks.add.using(priority=priority)


def test_naive_run_after_is_invalid_with_use_tz() -> None:
    with pytest.raises(InvalidTask, match="run_after must be an aware datetime"):
        tasks.add.using(run_after=datetime.datetime(2030, 1, 1))


def test_unknown_options_are_a_configuration_error() -> None:
    config = {
        "default": {
            "BACKEND": "procrastinate_django.tasks_backend.ProcrastinateBackend",
            "OPTIONS": {"POOL": 3},
        }
    }
    with override_settings(TASKS=config):
        with pytest.raises(InvalidTaskBackend, match=r"unknown keys \['POOL'\].*PROCRASTINATE_"):
            task_backends["default"]


def test_queue_names_longer_than_the_queue_allows_are_a_configuration_error() -> None:
    long_name = "q" * 51
    config = {
        "default": {
            "BACKEND": "procrastinate_django.tasks_backend.ProcrastinateBackend",
            "QUEUES": [long_name],
        }
    }
    with override_settings(TASKS=config):
        with pytest.raises(InvalidTaskBackend, match="limited to 50 bytes"):
            task_backends["default"]


def test_with_any_queue_allowed_the_queue_still_limits_queue_names() -> None:
    config = {
        "default": {
            "BACKEND": "procrastinate_django.tasks_backend.ProcrastinateBackend",
            "QUEUES": [],
        }
    }
    with override_settings(TASKS=config):
        assert tasks.add.using(queue_name="anything").queue_name == "anything"
        with pytest.raises(InvalidTask, match="is 51 bytes long; queue names are limited to 50"):
            tasks.add.using(queue_name="q" * 51)


@needs_db
def test_arguments_that_are_not_json_are_refused_and_nothing_is_queued() -> None:
    with pytest.raises(
        TypeError, match=r"'tests\.django\.django_tasks_app\.tasks\.add'.*args\[0\] of type set"
    ):
        tasks.add.enqueue({1, 2}, 3)
    with pytest.raises(TypeError, match=r"argument 'b'.*NaN"):
        tasks.add.enqueue(1, b=math.nan)
    assert app.job_manager.list_jobs() == []


# -- enqueue, run, read the result ---------------------------------------------


@needs_db
def test_enqueue_run_and_read_the_result() -> None:
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert result.args == [2, 3] and result.kwargs == {}
    assert result.backend == "default"
    assert result.enqueued_at is not None and result.worker_ids == [] and result.attempts == 0
    # enqueued_at is the database's, the same value get_result() reads (and equality holds).
    fetched = tasks.add.get_result(result.id)
    assert fetched.enqueued_at == result.enqueued_at
    assert fetched == result
    with pytest.raises(ValueError, match="Task has not finished yet"):
        _ = result.return_value

    stored = tasks.add.get_result(result.id)
    assert stored.status == TaskResultStatus.READY and stored.started_at is None

    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.is_finished
    assert result.return_value == 5
    assert result.errors == []
    assert result.attempts == 1 and len(result.worker_ids) == 1
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at

    again = default_task_backend.get_result(result.id)
    assert again.return_value == 5 and again.task == tasks.add and again.id == result.id


@needs_db
def test_keyword_arguments_queue_and_priority_of_the_decorator() -> None:
    result = tasks.send_email.enqueue("ann@example.com", subject="hello")
    assert result.task.queue_name == "emails" and result.task.priority == 10
    run_worker()
    result.refresh()
    assert result.return_value == {"to": "ann@example.com", "subject": "hello"}
    assert tasks.send_email.get_result(result.id).kwargs == {"subject": "hello"}


@needs_db
def test_failure_is_failed_with_the_exception_class_and_traceback() -> None:
    result = tasks.fail.enqueue("boom")
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value
    [error] = result.errors
    assert error.exception_class is ValueError
    assert "ValueError: boom" in error.traceback and "in fail" in error.traceback
    assert result.finished_at is not None


@needs_db
def test_a_return_value_that_is_not_json_fails_the_task() -> None:
    result = tasks.returns_a_set.enqueue()
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class is TypeError  # as Django's own backends report it
    assert error.exception_class_path == "builtins.TypeError"
    assert "returned a set, which cannot be stored as JSON" in error.traceback


@needs_db
def test_takes_context_receives_the_running_result() -> None:
    result = tasks.describe_context.enqueue("ctx")
    run_worker()
    result.refresh()
    value = result.return_value
    assert value["label"] == "ctx" and value["id"] == result.id
    assert value["attempt"] == 1 and value["status"] == "RUNNING" and value["started"]
    assert value["worker_ids"] == result.worker_ids
    assert value["task"] == "tests.django.django_tasks_app.tasks.describe_context"


@needs_db
async def test_async_task_with_aenqueue_and_aget_result() -> None:
    result = await tasks.async_add.aenqueue(4, 5)
    assert result.status == TaskResultStatus.READY
    await run_worker_async()
    await result.arefresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 9
    fetched = await tasks.async_add.aget_result(result.id)
    assert fetched.return_value == 9 and fetched.attempts == 1


@needs_db
async def test_sync_task_enqueued_from_async_code() -> None:
    result = await tasks.add.aenqueue(1, 1)
    await run_worker_async()
    assert (await default_task_backend.aget_result(result.id)).return_value == 2


@needs_db
def test_running_status_while_the_task_runs() -> None:
    tasks.gate.clear()
    result = tasks.wait_for_gate.enqueue()
    worker = threading.Thread(target=run_worker, name="django-tasks-worker", daemon=True)
    worker.start()
    try:
        running = wait_until(
            lambda: (
                (r := tasks.wait_for_gate.get_result(result.id)).status == TaskResultStatus.RUNNING
                and r
            ),
            timeout=15,
            what="task RUNNING",
        )
        assert running.started_at is not None and running.finished_at is None
        assert running.attempts == 1
        with pytest.raises(ValueError, match="Task has not finished yet"):
            _ = running.return_value
    finally:
        tasks.gate.set()
        worker.join(30)
    assert not worker.is_alive()
    result.refresh()
    assert result.return_value == "opened"


# -- using(): priority, queue_name, run_after -----------------------------------


@needs_db
def test_higher_priority_runs_first() -> None:
    low = tasks.record.using(priority=-5).enqueue("low")
    high = tasks.record.using(priority=50).enqueue("high")
    assert high.task.priority == 50
    run_worker()
    low.refresh()
    high.refresh()
    assert high.started_at < low.started_at
    from tests.django.testapp.models import TaskRun

    assert list(
        TaskRun.objects.filter(task="django_tasks.record")
        .order_by("id")
        .values_list("value", flat=True)
    ) == [
        "high",
        "low",
    ]


@needs_db
def test_queue_name_routes_the_job_to_workers_of_that_queue() -> None:
    result = tasks.add.using(queue_name="reports").enqueue(1, 2)
    assert result.task.queue_name == "reports"
    run_worker(queues=["default"])
    result.refresh()
    assert result.status == TaskResultStatus.READY
    run_worker(queues=["reports"])
    result.refresh()
    assert result.return_value == 3
    assert tasks.add.get_result(result.id).task.queue_name == "reports"


@needs_db
def test_run_after_holds_the_task_until_then() -> None:
    later = timezone.now() + datetime.timedelta(hours=1)
    waiting = tasks.add.using(run_after=later).enqueue(1, 1)
    due = tasks.add.using(run_after=timezone.now() - datetime.timedelta(seconds=1)).enqueue(2, 2)
    run_worker()
    waiting.refresh()
    due.refresh()
    assert due.return_value == 4
    assert waiting.status == TaskResultStatus.READY
    assert tasks.add.get_result(waiting.id).task.run_after == later


# -- transactions ---------------------------------------------------------------


@needs_db
def test_enqueue_inside_a_rolled_back_transaction_is_rolled_back() -> None:
    class Rollback(Exception):
        pass

    with pytest.raises(Rollback):
        with transaction.atomic():
            result = tasks.record.enqueue("rolled back")
            assert tasks.record.get_result(result.id).status == TaskResultStatus.READY
            raise Rollback
    with pytest.raises(TaskResultDoesNotExist):
        tasks.record.get_result(result.id)

    with transaction.atomic():
        kept = tasks.record.enqueue("committed")
    run_worker()
    assert tasks.record.get_result(kept.id).return_value == "committed"
    from tests.django.testapp.models import TaskRun

    assert list(
        TaskRun.objects.filter(task="django_tasks.record").values_list("value", flat=True)
    ) == ["committed"]


# -- reading results -------------------------------------------------------------


@needs_db
@pytest.mark.parametrize("result_id", ["999999", "not-a-number", "0", str(2**63)])
def test_unknown_result_id(result_id: str) -> None:
    with pytest.raises(TaskResultDoesNotExist, match=repr(result_id)):
        default_task_backend.get_result(result_id)


@needs_db
def test_result_of_another_task_is_a_mismatch() -> None:
    result = tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch, match="tests.django.django_tasks_app.tasks.add"):
        tasks.fail.get_result(result.id)


@needs_db
def test_native_task_results_are_stored_and_read_through_the_job_manager() -> None:
    job_id = tasks.native_double.defer(x=21)
    run_worker()
    [job] = app.job_manager.list_jobs(id=job_id)
    assert job.status == "succeeded" and job.result == 42
    with pytest.raises(TaskResultDoesNotExist, match="native task .*list_jobs"):
        default_task_backend.get_result(str(job_id))


@needs_db
def test_a_cancelled_task_is_failed_with_a_cancellation_error() -> None:
    result = tasks.add.enqueue(1, 2)
    assert app.job_manager.cancel_job_by_id(int(result.id))
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class.__name__ == "TaskCancelled"
    assert "cancelled" in error.traceback


# -- signals ----------------------------------------------------------------------


@pytest.fixture
def signals_seen() -> Iterator[list[tuple[str, str, str, type]]]:
    seen: list[tuple[str, str, str, type]] = []

    def receiver(name: str) -> Any:
        def on_signal(sender: type, task_result: Any, **kwargs: Any) -> None:
            seen.append((name, task_result.id, str(task_result.status), sender))

        return on_signal

    receivers = {
        signal: receiver(name)
        for signal, name in [
            (task_enqueued, "enqueued"),
            (task_started, "started"),
            (task_finished, "finished"),
        ]
    }
    for signal, on_signal in receivers.items():
        signal.connect(on_signal)
    yield seen
    for signal, on_signal in receivers.items():
        signal.disconnect(on_signal)


@needs_db
def test_signals_enqueued_started_finished(signals_seen: list[tuple[str, str, str, type]]) -> None:
    backend_class = type(task_backends["default"])
    ok = tasks.add.enqueue(1, 2)
    assert signals_seen == [("enqueued", ok.id, "READY", backend_class)]
    bad = tasks.fail.enqueue("no")
    run_worker()
    assert signals_seen == [
        ("enqueued", ok.id, "READY", backend_class),
        ("enqueued", bad.id, "READY", backend_class),
        ("started", ok.id, "RUNNING", backend_class),
        ("finished", ok.id, "SUCCESSFUL", backend_class),
        ("started", bad.id, "RUNNING", backend_class),
        ("finished", bad.id, "FAILED", backend_class),
    ]


@needs_db
async def test_signals_of_async_tasks(signals_seen: list[tuple[str, str, str, type]]) -> None:
    result = await tasks.async_add.aenqueue(1, 2)
    await run_worker_async()
    assert [(name, status) for name, rid, status, _ in signals_seen if rid == result.id] == [
        ("enqueued", "READY"),
        ("started", "RUNNING"),
        ("finished", "SUCCESSFUL"),
    ]


@needs_db
def test_errors_lists_the_error_of_each_execution_in_order() -> None:
    """Django documents `errors` as the errors raised as part of each execution."""
    result = tasks.fail.enqueue("first run")
    run_worker()
    assert app.job_manager.retry_job_by_id(int(result.id))
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.attempts == 2
    assert [error.exception_class for error in result.errors] == [ValueError, ValueError]
    assert all("first run" in error.traceback for error in result.errors)
    assert len({id(error) for error in result.errors}) == 2


@needs_db
def test_a_task_retried_through_the_queue_counts_its_attempts() -> None:
    result = tasks.describe_context.enqueue("twice")
    run_worker()
    first = tasks.describe_context.get_result(result.id)
    assert first.return_value["attempt"] == 1
    assert app.job_manager.retry_job_by_id(int(result.id))
    assert tasks.describe_context.get_result(result.id).status == TaskResultStatus.READY
    run_worker()
    result.refresh()
    assert result.attempts == 2 and result.return_value["attempt"] == 2
    assert result.started_at == first.started_at < result.last_attempted_at
    assert result.worker_ids[-1] == result.return_value["worker_ids"][-1]
    # Each attempt ran on its own worker, and both are known (the job's history keeps them).
    assert result.worker_ids == [first.worker_ids[0], result.return_value["worker_ids"][-1]]
    assert result.worker_ids[0] != result.worker_ids[1] and "unknown" not in result.worker_ids


# -- the deployed shape: `manage.py procrastinate worker` in another process ----


@needs_db
def test_a_worker_process_runs_the_tasks_enqueued_here(tmp_path: Path) -> None:
    from django.db import connection

    (tmp_path / "worker_settings.py").write_text(
        "from tests.django.settings import *  # noqa: F403\n"
        f"DATABASES['default']['NAME'] = {connection.settings_dict['NAME']!r}\n"
    )
    ok = tasks.send_email.enqueue("bob@example.com", subject="from afar")
    bad = tasks.fail.enqueue("far away")
    coroutine = tasks.async_add.using(priority=-1).enqueue(20, 22)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "worker_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "django", "procrastinate", "worker", "--one-shot"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    ok.refresh()
    bad.refresh()
    coroutine.refresh()
    assert ok.return_value == {"to": "bob@example.com", "subject": "from afar"}
    assert bad.status == TaskResultStatus.FAILED and bad.errors[0].exception_class is ValueError
    assert "far away" in bad.errors[0].traceback
    assert coroutine.return_value == 42
    assert ok.worker_ids == bad.worker_ids == coroutine.worker_ids


def test_system_check_reports_the_app_missing_from_installed_apps() -> None:
    backend = task_backends["default"]
    with override_settings(INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"]):
        [error] = backend.check()
    assert error.id == "procrastinate_django.E101"
    assert "procrastinate_django is not in INSTALLED_APPS" in error.msg
    assert backend.check() == []
