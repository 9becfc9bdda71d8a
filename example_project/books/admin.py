"""The books in the admin, beside the queue's jobs."""

from __future__ import annotations

from django.contrib import admin

from example_project.books.models import Book, LibraryStat, Report


@admin.register(Book)
class BookAdmin(admin.ModelAdmin):
    list_display = ["title", "author", "created_at", "indexed_at"]
    search_fields = ["title", "author", "search_terms"]


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ["id", "requested_at", "status", "attempts", "progress"]


@admin.register(LibraryStat)
class LibraryStatAdmin(admin.ModelAdmin):
    list_display = ["at", "books", "indexed"]
