from __future__ import annotations

from django.db import models


class Order(models.Model):
    """The row a view writes in the same transaction as its defer; the job confirms it."""

    number = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    #: set by the job (one ORM UPDATE): what the bench counts for a queue it cannot query
    confirmed = models.BooleanField(default=False)
