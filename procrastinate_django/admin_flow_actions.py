"""Admin actions that pause and resume the queues (or tasks) of the selected jobs (#13).

Pausing stops every worker from starting jobs of that queue or task (running
ones finish); it survives restarts, and resuming wakes the workers. Both go
through the JobManager and need the permission to cancel jobs ("cancel_job"):
pausing a queue is cancelling its starts for a while. The page lists what is
paused in the message it shows after each action.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from procrastinate_django.admin_actions import job_manager


def _set_paused(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    kind: str,
    paused: bool,
) -> None:
    column = "queue_name" if kind == "queue" else "task_name"
    names = sorted(set(queryset.values_list(column, flat=True)))
    manager = job_manager()
    verb = "pause" if paused else "resume"
    changed = sum(getattr(manager, f"{verb}_{kind}")(name) for name in names)
    held = "held" if paused else "released"
    listed = ", ".join(names) or "none"
    modeladmin.message_user(
        request,
        f"{verb.capitalize()}d {kind}(s) {listed}: {changed} waiting job(s) {held}.",
        messages.SUCCESS,
    )
    paused_now = [f"{row['kind']} {row['name']}" for row in manager.list_paused()]
    modeladmin.message_user(
        request, f"Paused now: {', '.join(paused_now) or 'nothing'}.", messages.INFO
    )


@admin.action(description="Pause the queues of selected jobs", permissions=["cancel"])
def pause_queues(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]
) -> None:
    _set_paused(modeladmin, request, queryset, "queue", True)


@admin.action(description="Resume the queues of selected jobs", permissions=["cancel"])
def resume_queues(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]
) -> None:
    _set_paused(modeladmin, request, queryset, "queue", False)


@admin.action(description="Pause the tasks of selected jobs", permissions=["cancel"])
def pause_tasks(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]
) -> None:
    _set_paused(modeladmin, request, queryset, "task", True)


@admin.action(description="Resume the tasks of selected jobs", permissions=["cancel"])
def resume_tasks(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]
) -> None:
    _set_paused(modeladmin, request, queryset, "task", False)


ACTIONS = [pause_queues, resume_queues, pause_tasks, resume_tasks]
