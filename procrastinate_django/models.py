"""Read-only, unmanaged models over the queue tables (pcq_jobs, pcq_events, pcq_workers).

They exist for the admin and for queries in users' code. The schema belongs to
the core's migrations, so Django never creates or alters these tables, and
saving or deleting through the ORM is refused: change jobs through the
JobManager (`app.job_manager`), which knows the rules (locks, statuses).
"""

from __future__ import annotations

from typing import Any

from django.db import models

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
    priority = models.IntegerField()
    lock = models.TextField(null=True)
    queueing_lock = models.TextField(null=True)
    args = models.JSONField()
    status = models.TextField(choices=STATUSES)
    scheduled_at = models.DateTimeField(null=True)
    attempts = models.IntegerField()
    worker_id = models.BigIntegerField(null=True)
    abort_requested = models.BooleanField()
    created_at = models.DateTimeField()
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
    attempt = models.IntegerField()
    at = models.DateTimeField()
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
