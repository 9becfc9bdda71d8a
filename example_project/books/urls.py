"""URLs of the books app."""

from __future__ import annotations

from django.urls import path

from example_project.books import views

urlpatterns = [
    path("", views.book_list, name="book_list"),
    path("reports/", views.reports, name="reports"),
    path("reindex/", views.reindex_all, name="reindex_all"),
    path("status.json", views.status, name="status"),
]
