from __future__ import annotations

from django.db import models


class Order(models.Model):
    """The row a view writes in the same transaction as its defer."""

    number = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
