"""Books, the reports about them, and the periodic library statistics."""

from __future__ import annotations

from django.db import models


class Book(models.Model):
    title = models.CharField(max_length=200)
    author = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    #: Set by the index_book task: the words a search would match.
    search_terms = models.TextField(blank=True, default="")
    indexed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.title} ({self.author})"


class Report(models.Model):
    """Made by the long generate_report task, which fails its first attempt on purpose."""

    requested_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=20, default="waiting")
    attempts = models.IntegerField(default=0)
    progress = models.IntegerField(default=0)
    content = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-id"]


class LibraryStat(models.Model):
    """One row per tick of the periodic count_books task."""

    at = models.DateTimeField()
    books = models.IntegerField()
    indexed = models.IntegerField()

    class Meta:
        ordering = ["-at"]
