"""The admin's job actions: retry, cancel, abort, delete, each through the JobManager.

Each action declares the permission it needs (Django hides it from, and refuses
it to, users without it), acts only on jobs in the status it is meant for, and
reports how many jobs it changed and how many it left alone, and why. Each
change is logged as a Django admin LogEntry, so the job's HISTORY page lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from procrastinate_core import exceptions
from procrastinate_core.jobs import RETRY_RULE, RETRYABLE_STATUSES
from procrastinate_core.manager import JobManager


def _plural(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


def job_manager() -> JobManager:
    """The project's JobManager (the lazy procrastinate_django.app's)."""
    from procrastinate_django.procrastinate_app import app

    return app.job_manager


def _apply(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    *,
    verb: str,
    statuses: Iterable[str],
    change: Callable[[JobManager, int], bool],
    rule: str | None = None,
) -> None:
    """Run `change` on each selected job in `statuses`; one message with the counts.

    `rule`: why the others are left alone (default: only jobs in `statuses`)."""
    statuses = tuple(statuses)
    manager = job_manager()
    done, skipped, refused = 0, 0, []
    for job in queryset.only("id", "status", "task_name"):
        if job.status not in statuses:
            skipped += 1
            continue
        try:
            changed = change(manager, job.pk)
        except exceptions.AlreadyEnqueued as exc:
            refused.append(f"job {job.pk}: {exc}")
            continue
        if changed:
            done += 1
            # Shown by the job page's HISTORY button: who did what, and when.
            modeladmin.log_change(request, job, f"{verb} (was {job.status}) by an admin action")
        else:
            skipped += 1  # its status changed meanwhile
    rule = rule or f"only {' or '.join(statuses)} jobs can be {verb.lower()}"
    text = f"{verb} {_plural(done)}."
    if skipped:
        text += f" {_plural(skipped)} left unchanged: {rule}."
    level = messages.SUCCESS if done and not skipped and not refused else messages.WARNING
    modeladmin.message_user(request, text, level)
    for reason in refused:
        modeladmin.message_user(request, reason, messages.ERROR)


@admin.action(description="Retry selected failed, aborted or cancelled jobs", permissions=["retry"])
def retry_jobs(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]) -> None:
    """The shell's rule (jobs.RETRYABLE_STATUSES): waiting, running and succeeded jobs are
    refused, so nothing runs twice by mistake."""
    _apply(
        modeladmin,
        request,
        queryset,
        verb="Retried",
        statuses=[status.value for status in RETRYABLE_STATUSES],
        change=lambda manager, job_id: manager.retry_job_by_id(job_id, statuses=RETRYABLE_STATUSES),
        rule=RETRY_RULE,
    )


@admin.action(description="Cancel selected waiting jobs", permissions=["cancel"])
def cancel_jobs(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]
) -> None:
    _apply(
        modeladmin,
        request,
        queryset,
        verb="Cancelled",
        statuses=["todo"],
        change=lambda manager, job_id: manager.cancel_job_by_id(job_id),
    )


@admin.action(description="Abort selected running jobs", permissions=["abort"])
def abort_jobs(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]) -> None:
    """Running jobs are asked to stop; the worker records them as aborted."""
    _apply(
        modeladmin,
        request,
        queryset,
        verb="Aborted",
        statuses=["doing"],
        change=lambda manager, job_id: manager.cancel_job_by_id(job_id, abort=True),
    )


@admin.action(description="Delete selected finished jobs", permissions=["delete"])
def delete_jobs(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]
) -> None:
    _apply(
        modeladmin,
        request,
        queryset,
        verb="Deleted",
        statuses=["succeeded", "failed", "cancelled", "aborted"],
        change=lambda manager, job_id: manager.delete_finished_job_by_id(job_id),
    )
