"""Job inspection in the Django admin: list, filters, search, detail with history, summary, actions.

Data is read-only here (no add, no edit form, no ORM delete); the only changes
are the actions of admin_actions.py, which go through the JobManager and each
need their own permission (procrastinate_django.retry_job, cancel_job,
abort_job, delete_procrastinatejob). Seeing jobs needs view_procrastinatejob.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import django
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, router, transaction
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from procrastinate_core import exceptions, validation
from procrastinate_core.connectors import errors
from procrastinate_core.jobs import Status
from procrastinate_django import admin_actions, admin_counts, admin_flow_actions
from procrastinate_django import models as models_module
from procrastinate_django.models import ProcrastinateJob

_STATUS_COLOURS = {
    "todo": "#777",
    "doing": "#1a6fb5",
    "succeeded": "#2b8a3e",
    "failed": "#c92a2a",
    "cancelled": "#a67c00",
    "aborted": "#a67c00",
}


def _when(value: datetime.datetime | None) -> str:
    """A time to the second, in the site's time zone (Django's default format stops at minutes)."""
    if value is None:
        return "-"
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return date_format(value, "Y-m-d H:i:s")


def _breakable(name: str) -> str:
    """A dotted or dashed name the browser may wrap after each separator (long task paths)."""
    parts = re.split(r"(?<=[._-])", name)
    return format_html_join(mark_safe("<wbr>"), "{}", ((part,) for part in parts))


#: History events that end an attempt: where that attempt's error is shown.
_ATTEMPT_ENDS = frozenset({"failed", "deferred_for_retry", "recovered", "aborted", "cancelled"})


def _attempt_error(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    return format_html(
        '<details class="pcq-attempt-error"><summary><b>{}</b>: '
        "{}</summary><pre>{}</pre></details>",
        entry.get("type", "error"),
        entry.get("message", ""),
        entry.get("traceback", ""),
    )


def _pretty_json(value: Any) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


def _missing_schema_response(exc: DatabaseError) -> HttpResponse:
    """A page naming the fix when the queue's tables are missing; other errors propagate."""
    translated = errors.translate(exc)
    if not isinstance(translated, exceptions.SchemaNotInstalled):
        raise exc
    return HttpResponse(str(translated), status=503, content_type="text/plain; charset=utf-8")


@admin.register(ProcrastinateJob)
class ProcrastinateJobAdmin(admin.ModelAdmin):
    # Eight columns fit a 1280 px screen: the four timestamps are folded into
    # "created" and "last change" (which says what changed), with seconds.
    list_display = [
        "id",
        "status_badge",
        "task",
        "queue",
        "priority",
        "lock_name",
        "attempts",
        "created",
        "last_change",
    ]
    list_display_links = ["id", "task"]
    # Queue and task choices come from count_job_rows, not a DISTINCT over every row;
    # no date_hierarchy (its min/max and date list read the whole table). See admin_counts.
    list_filter = [
        "status",
        admin_counts.QueueFilter,
        admin_counts.TaskFilter,
        "created_at",
        "finished_at",
    ]
    search_fields = ["=id", "task_name", "lock", "queueing_lock"]
    list_per_page = 50
    # The count under the list: exact when cheap, else the planner's estimate ("about").
    paginator = admin_counts.EstimatingPaginator
    show_full_result_count = False
    #: Rows in pcq_jobs above which the summary and the filters estimate finished jobs.
    estimate_above: int | None = admin_counts.ESTIMATE_ABOVE
    actions = [
        admin_actions.retry_jobs,
        admin_actions.cancel_jobs,
        admin_actions.abort_jobs,
        admin_actions.delete_jobs,
        *admin_flow_actions.ACTIONS,  # pause / resume queues and tasks (#13)
    ]
    fields = [
        "id",
        "status_badge",
        "task_name",
        "queue_name",
        "priority",
        "lock",
        "queueing_lock",
        "attempts",
        "worker_id",
        "abort_was_requested",
        "scheduled",
        "created",
        "started",
        "finished",
        "arguments",
        "outcome",
        "history",
    ]
    readonly_fields = fields

    # -- permissions: read-only data, one permission per action ---------------
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Only the bulk action (obj is None) deletes, through the JobManager.
        return obj is None and request.user.has_perm("procrastinate_django.delete_procrastinatejob")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("procrastinate_django.retry_job")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("procrastinate_django.cancel_job")

    def has_abort_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("procrastinate_django.abort_job")

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        # action_location exists from Django 6.1 on; older versions call get_actions(request).
        extra = {} if action_location is None else {"action_location": action_location}
        found = super().get_actions(request, **extra)
        found.pop("delete_selected", None)  # would delete through the ORM
        return found

    # -- search: id, task, lock, and the arguments' JSON text ------------------
    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ProcrastinateJob], search_term: str
    ) -> tuple[QuerySet[ProcrastinateJob], bool]:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        if search_term:
            by_args = queryset.annotate(args_text=Cast("args", TextField())).filter(
                args_text__icontains=search_term
            )
            found = queryset.filter(Q(pk__in=found.values("pk")) | Q(pk__in=by_args.values("pk")))
        return found, duplicates

    # -- columns and detail fields --------------------------------------------
    @admin.display(description="status", ordering="status")
    def status_badge(self, job: ProcrastinateJob) -> str:
        colour = _STATUS_COLOURS.get(job.status, "#777")
        return format_html('<b style="color: {}">{}</b>', colour, job.status)

    @admin.display(description="task", ordering="task_name")
    def task(self, job: ProcrastinateJob) -> str:
        return _breakable(job.task_name)

    @admin.display(description="queue", ordering="queue_name")
    def queue(self, job: ProcrastinateJob) -> str:
        return _breakable(job.queue_name)

    @admin.display(description="lock", ordering="lock")
    def lock_name(self, job: ProcrastinateJob) -> str:
        return _breakable(job.lock) if job.lock else "-"

    @admin.display(description="created", ordering="created_at")
    def created(self, job: ProcrastinateJob) -> str:
        return _when(job.created_at)

    @admin.display(description="scheduled for", ordering="scheduled_at")
    def scheduled(self, job: ProcrastinateJob) -> str:
        return _when(job.scheduled_at)

    @admin.display(description="started", ordering="started_at")
    def started(self, job: ProcrastinateJob) -> str:
        return _when(job.started_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, job: ProcrastinateJob) -> str:
        return _when(job.finished_at)

    @admin.display(description="last change")
    def last_change(self, job: ProcrastinateJob) -> str:
        """The newest of the job's times, named: what a person scanning the list wants."""
        for label, value in (
            ("finished", job.finished_at),
            ("started", job.started_at),
            ("scheduled for", job.scheduled_at),
        ):
            if value is not None:
                return f"{label} {_when(value)}"
        return "-"

    @admin.display(description="abort requested", boolean=True)
    def abort_was_requested(self, job: ProcrastinateJob) -> bool:
        """Whether an abort was ever asked for this attempt, not only while it runs.

        The flag on the row is cleared once the attempt ends; an aborted job (or
        one whose history records the request) was asked all the same.
        """
        if job.abort_requested or job.status == Status.ABORTED.value:
            return True
        return job.events.filter(type="abort_requested", attempt=job.attempts).exists()

    @admin.display(description="arguments")
    def arguments(self, job: ProcrastinateJob) -> str:
        return _pretty_json(job.args)

    @admin.display(description="result or error")
    def outcome(self, job: ProcrastinateJob) -> str:
        if job.error:
            error = job.error if isinstance(job.error, dict) else {"message": job.error}
            return format_html(
                "<b>{}</b>: {}<pre>{}</pre>",
                error.get("type", "error"),
                error.get("message", ""),
                error.get("traceback", ""),
            )
        if job.status == Status.SUCCEEDED.value:
            return _pretty_json(job.result)
        return "-"

    @admin.display(description="history")
    def history(self, job: ProcrastinateJob) -> str:
        """Every event, and on each attempt's end the error it raised (all attempts, not the
        last)."""
        events = job.events.order_by("id").values_list("type", "attempt", "at", "worker_id")
        errors = {
            entry.get("attempt"): entry
            for entry in admin_actions.job_manager().list_job_errors(job.pk)
        }
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    type_,
                    attempt,
                    at.isoformat(sep=" ", timespec="seconds"),
                    "-" if worker is None else worker,
                    _attempt_error(errors.get(attempt)) if type_ in _ATTEMPT_ENDS else "",
                )
                for type_, attempt, at, worker in events
            ),
        )
        return format_html(
            '<table class="pcq-history"><thead><tr><th>event</th><th>attempt</th><th>at</th>'
            "<th>worker</th><th>error</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    # -- summary page ----------------------------------------------------------
    def get_urls(self) -> list[URLPattern]:
        summary = path(
            "summary/",
            self.admin_site.admin_view(self.summary_view),
            name="procrastinate_django_procrastinatejob_summary",
        )
        dashboard = path(
            "dashboard/",
            self.admin_site.admin_view(self.dashboard_view),
            name="procrastinate_django_procrastinatejob_dashboard",
        )
        return [summary, dashboard, *super().get_urls()]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Queues, throughput over the last hour, workers and periodic ticks; refreshes itself."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        from procrastinate_django import dashboard
        from procrastinate_django.procrastinate_app import app

        if request.method == "POST":
            # Resume a paused queue or task: the same permission as the list's
            # pause/resume actions (cancel_job). CSRF-checked by the admin view.
            if not self.has_cancel_permission(request):
                raise PermissionDenied
            kind, name = request.POST.get("kind"), request.POST.get("name", "")
            if kind not in ("queue", "task") or not name:
                messages.error(request, "Resume what? Expected a paused queue or task.")
            else:
                released = getattr(app.job_manager, f"resume_{kind}")(name)
                messages.success(
                    request, f"Resumed {kind} {name}: {released} waiting job(s) released."
                )
            return HttpResponseRedirect(request.path)

        try:
            refresh = max(int(request.GET.get("refresh", "10")), 0)
        except ValueError:
            refresh = 10
        context = {
            **self.admin_site.each_context(request),
            **dashboard.build(app),
            "title": "Task queue dashboard",
            "opts": self.model._meta,
            "refresh": refresh,
            "changelist_url": reverse("admin:procrastinate_django_procrastinatejob_changelist"),
            "breadcrumbs_as_list": django.VERSION >= (6, 0),
            "can_resume": self.has_cancel_permission(request),
        }
        return TemplateResponse(request, "admin/procrastinate_django/dashboard.html", context)

    def summary_view(self, request: HttpRequest) -> HttpResponse:
        """Counts of jobs by status, by queue and by task (finished ones estimated when many)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            **admin_counts.summary(self.estimate_above),
            "title": "Job summary",
            "opts": self.model._meta,
            "changelist_url": reverse("admin:procrastinate_django_procrastinatejob_changelist"),
            # Django 6 draws breadcrumbs as a list, earlier versions as a div.
            "breadcrumbs_as_list": django.VERSION >= (6, 0),
        }
        return TemplateResponse(request, "admin/procrastinate_django/summary.html", context)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        changelist_url = reverse("admin:procrastinate_django_procrastinatejob_changelist")
        for key, value in request.GET.items():
            problem = validation.text_problem(value)
            if problem is not None:
                # Such text cannot be sent to PostgreSQL (a NUL would raise in the driver):
                # refuse the search or filter here instead of failing with a server error.
                messages.error(
                    request,
                    f"The {key!r} search or filter was ignored: {problem}. Remove that character.",
                )
                return HttpResponseRedirect(changelist_url)
        extra = {
            **(extra_context or {}),
            "summary_url": reverse("admin:procrastinate_django_procrastinatejob_summary"),
            "dashboard_url": reverse("admin:procrastinate_django_procrastinatejob_dashboard"),
        }
        try:
            # A savepoint: after a missing-table error the request's transaction (a test's,
            # ATOMIC_REQUESTS) stays usable for the session and messages middleware.
            with transaction.atomic(using=router.db_for_read(ProcrastinateJob)):
                return super().changelist_view(request, extra)
        except DatabaseError as exc:
            return _missing_schema_response(exc)
        except exceptions.SchemaNotInstalled as exc:  # from the filters' counts (JobManager)
            return HttpResponse(str(exc), status=503, content_type="text/plain; charset=utf-8")


@admin.register(models_module.ProcrastinateWorker)
class ProcrastinateWorkerAdmin(admin.ModelAdmin):
    """Registered workers and their heartbeats (read-only)."""

    list_display = ["id", "name", "host", "pid", "started_at", "last_heartbeat"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(models_module.ProcrastinateDashboard)
class ProcrastinateDashboardAdmin(admin.ModelAdmin):
    """The admin index's "Dashboard" entry: it opens the jobs' dashboard page."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("procrastinate_django.view_procrastinatejob")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("procrastinate_django.view_procrastinatejob")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return HttpResponseRedirect(
            reverse("admin:procrastinate_django_procrastinatejob_dashboard")
        )
