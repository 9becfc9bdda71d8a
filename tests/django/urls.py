"""URLs of the Django test project: the admin and the views of tests/django/testapp."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from procrastinate_django.metrics import metrics_view
from tests.django.testapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("defer/", views.defer_view),
    path("defer-async/", views.defer_async_view),
    path("defer-then-fail/", views.defer_then_fail_view),
    path("metrics/", metrics_view),
]
