"""Settings of the bench's Django site: one view that defers a job inside `transaction.atomic()`.

BENCH_DJANGO_DSN (libpq conninfo) names the database; BENCH_DJANGO_SYSTEM picks the
queue the view defers to: "ours" (procrastinate_django) or "django-tasks-db"
(Django's tasks framework with django-tasks-db's DatabaseBackend).
"""

from __future__ import annotations

import os

import psycopg

_params = psycopg.conninfo.conninfo_to_dict(os.environ.get("BENCH_DJANGO_DSN", "dbname=postgres"))
SYSTEM = os.environ.get("BENCH_DJANGO_SYSTEM", "ours")

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "bench.django_site.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "bench.django_site.benchapp"]
INSTALLED_APPS += ["procrastinate_django"] if SYSTEM == "ours" else ["django_tasks_db"]
MIDDLEWARE: list[str] = []
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _params.get("dbname"),
        "HOST": _params.get("host", ""),
        "PORT": _params.get("port", ""),
        "USER": _params.get("user", ""),
        "CONN_MAX_AGE": None,  # one persistent connection, as a production site runs
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
if SYSTEM != "ours":
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
PROCRASTINATE_IMPORT_PATHS = ("bench.django_site.benchapp.jobs",)
PROCRASTINATE_AUTODISCOVER_MODULE_NAME = None
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
