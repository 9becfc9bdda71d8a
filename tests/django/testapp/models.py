"""Models the test tasks and views write, to see what ran and what was rolled back."""

from __future__ import annotations

from django.db import models


class Note(models.Model):
    text = models.TextField()


class TaskRun(models.Model):
    """A ledger row per task execution, written through the ORM from inside the task."""

    task = models.TextField()
    value = models.TextField(default="")
    at = models.DateTimeField(auto_now_add=True)
