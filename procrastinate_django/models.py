"""Read-only, unmanaged models over the queue tables (pcq_jobs, pcq_events, pcq_workers,
pcq_periodic_defers), named as procrastinate names its models.

They exist for the admin and for queries in users' code. The schema belongs to
the core's migrations, so Django never creates or alters these tables, and
saving or deleting through the ORM is refused: change jobs through the
JobManager (`app.job_manager`), which knows the rules (locks, statuses).

With PROCRASTINATE_READONLY_MODELS = False (tests), rows can be written through
the ORM; the columns the database fills by itself have defaults here too, so
`ProcrastinateJob.objects.create(task_name=..., queue_name=...)` needs no more
(created_at is the database's now(), as every time decision here).
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.functions import Now

from procrastinate_core.jobs import Status
from procrastinate_django.settings import settings


class ReadOnlyError(RuntimeError):
    """Raised when code tries to write a queue table through the ORM."""


class ReadOnlyModel(models.Model):
    """Refuses save() and delete() unless PROCRASTINATE_READONLY_MODELS is False (tests)."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not settings.READONLY_MODELS:
            return super().save(*args, **kwargs)
        raise ReadOnlyError(
            f"{type(self).__name__} is read-only: change jobs through app.job_manager "
            "(retry_job_by_id, cancel_job_by_id, ...), never through the ORM. "
            "(Tests that need rows of their own may set PROCRASTINATE_READONLY_MODELS = False.)"
        )

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        if not settings.READONLY_MODELS:
            return super().delete(*args, **kwargs)
        raise ReadOnlyError(
            f"{type(self).__name__} is read-only: delete jobs through app.job_manager."
        )


class ProcrastinateWorker(ReadOnlyModel):
    id = models.BigAutoField(primary_key=True)
    name = models.TextField(null=True)
    host = models.TextField(null=True)
    pid = models.IntegerField(null=True)
    started_at = models.DateTimeField()
    last_heartbeat = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "pcq_workers"
        verbose_name = "worker"

    def __str__(self) -> str:
        return f"worker {self.id} ({self.name or self.host or '?'})"


class ProcrastinateJob(ReadOnlyModel):
    STATUSES = [(status.value, status.value) for status in Status]

    id = models.BigAutoField(primary_key=True)
    queue_name = models.TextField("queue")
    task_name = models.TextField("task")
    priority = models.IntegerField(default=0)
    lock = models.TextField(null=True)
    queueing_lock = models.TextField(null=True)
    args = models.JSONField(default=dict)
    status = models.TextField(choices=STATUSES, default=Status.TODO.value)
    scheduled_at = models.DateTimeField(null=True)
    #: runs started (claims), including a running one; procrastinate's Job.attempts
    #: counts the earlier runs only (see docs/retries.md)
    attempts = models.IntegerField(default=0)
    worker_id = models.BigIntegerField(null=True)
    abort_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(db_default=Now())
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    result = models.JSONField(null=True)
    error = models.JSONField(null=True)

    class Meta:
        managed = False
        db_table = "pcq_jobs"
        verbose_name = "job"
        ordering = ["-id"]
        permissions = [
            ("retry_job", "Can retry failed jobs"),
            ("cancel_job", "Can cancel waiting jobs"),
            ("abort_job", "Can abort running jobs"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.id}]"


class ProcrastinateEvent(ReadOnlyModel):
    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(
        ProcrastinateJob, on_delete=models.DO_NOTHING, related_name="events", db_constraint=False
    )
    type = models.TextField()
    attempt = models.IntegerField(default=0)
    at = models.DateTimeField(db_default=Now())
    #: the worker that started, ran or (for "recovered") lost the attempt; null for
    #: events without one and those written before the core's migration 0005
    worker_id = models.BigIntegerField(null=True)

    class Meta:
        managed = False
        db_table = "pcq_events"
        verbose_name = "event"
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.type} (job {self.job_id}, attempt {self.attempt})"


class ProcrastinatePeriodicDefer(ReadOnlyModel):
    """One periodic tick deferred (by whichever worker got there first): its primary key
    makes each tick deferred once. Unlike procrastinate's table it has no `id` column."""

    pk = models.CompositePrimaryKey("task_name", "periodic_id", "defer_timestamp")
    task_name = models.TextField()
    periodic_id = models.TextField(default="")
    defer_timestamp = models.BigIntegerField()
    job = models.ForeignKey(
        ProcrastinateJob,
        null=True,
        on_delete=models.DO_NOTHING,
        related_name="periodic_defers",
        db_constraint=False,
    )

    class Meta:
        managed = False
        db_table = "pcq_periodic_defers"
        verbose_name = "periodic defer"

    def __str__(self) -> str:
        return f"{self.task_name}[{self.periodic_id}] at {self.defer_timestamp}"


class ProcrastinateDashboard(ProcrastinateJob):
    """No data of its own: the admin index's "Dashboard" entry (a proxy of the jobs).

    Seeing it needs the jobs' view permission (procrastinate_django.view_procrastinatejob).
    """

    class Meta:
        proxy = True
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"
