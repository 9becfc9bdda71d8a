"""procrastinate.contrib.django's models, as its docs show them, under procrastinate_django."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command

from procrastinate_django import app


@pytest.mark.django_db
def test_job_created_through_the_orm_needs_only_its_task_and_queue(settings: Any) -> None:
    from procrastinate_django.models import ProcrastinateJob

    settings.PROCRASTINATE_READONLY_MODELS = False
    job = ProcrastinateJob.objects.create(task_name="made.by.a.fixture", queue_name="default")
    job.refresh_from_db()
    assert job.created_at is not None  # the database's now()
    assert (job.status, job.priority, job.attempts, job.args, job.abort_requested) == (
        "todo",
        0,
        0,
        {},
        False,
    )
    [seen] = app.job_manager.list_jobs(id=job.id)
    assert (seen.task_name, seen.status, seen.attempts) == ("made.by.a.fixture", "todo", 0)


@pytest.mark.django_db
def test_periodic_defer_model_reads_the_ticks() -> None:
    from procrastinate_core.jobs import Job
    from procrastinate_django.models import ProcrastinatePeriodicDefer, ReadOnlyError

    tick = Job(queue="default", task_name="ticker", task_kwargs={"timestamp": 60})
    job_id = app.job_manager.defer_periodic_job(tick, "every-minute", 60)
    [defer] = ProcrastinatePeriodicDefer.objects.filter(task_name="ticker")
    assert (defer.periodic_id, defer.defer_timestamp, defer.job_id) == ("every-minute", 60, job_id)
    assert defer.job.task_name == "ticker" and list(defer.job.periodic_defers.all()) == [defer]
    assert defer.pk == ("ticker", "every-minute", 60)
    with pytest.raises(ReadOnlyError):
        defer.save()


@pytest.mark.django_db
def test_models_match_their_migrations() -> None:
    call_command("makemigrations", "procrastinate_django", "--check", "--dry-run", verbosity=0)


def test_worker_defaults_task_middleware_is_checked(settings: Any) -> None:
    from django.core import checks

    from procrastinate_django.checks import check_settings

    settings.PROCRASTINATE_WORKER_DEFAULTS = {"task_middleware": ["not callable"]}
    errors = check_settings()
    assert [m.level for m in errors] == [checks.ERROR]
    assert "task_middleware 'not callable' is not callable" in errors[0].msg

    def sync_mw(call_next, context, worker):  # noqa: ANN001, ANN202
        return call_next()

    settings.PROCRASTINATE_WORKER_DEFAULTS = {"task_middleware": [sync_mw]}
    assert check_settings() == []
