"""The books app of the example project."""

from __future__ import annotations

from django.apps import AppConfig


class BooksConfig(AppConfig):
    name = "example_project.books"
    label = "books"
    default_auto_field = "django.db.models.BigAutoField"
