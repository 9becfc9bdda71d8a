"""Settings of the bench's Django site: one view that defers a job inside `transaction.atomic()`.

BENCH_DJANGO_DSN (libpq conninfo) names the database; BENCH_DJANGO_SYSTEM picks the
queue the view defers to: "ours" (procrastinate_django), "procrastinate" (its
procrastinate.contrib.django), "celery" (Celery on RabbitMQ, published on commit)
or "django-tasks-db" (Django's tasks framework with django-tasks-db's DatabaseBackend).
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
INSTALLED_APPS += {
    "ours": ["procrastinate_django"],
    "procrastinate": ["procrastinate.contrib.django"],
    "celery": [],
}.get(SYSTEM, ["django_tasks_db"])
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
if SYSTEM == "django-tasks-db":
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
# Celery as its "Optimizing" guide advises for many short tasks (as in bench/peers_broker.py),
# on RabbitMQ, in a queue of the bench's own that it purges and deletes.
CELERY_QUEUE = "pcqbench_w18_django_celery"
_amqp = (os.environ.get("BENCH_AMQP_HOST", "127.0.0.1"), os.environ.get("BENCH_AMQP_PORT", "5672"))
CELERY_BROKER_URL = "amqp://guest:guest@{}:{}//".format(*_amqp)
CELERY_TASK_DEFAULT_QUEUE = CELERY_QUEUE
CELERY_TASK_DEFAULT_EXCHANGE = CELERY_QUEUE
CELERY_TASK_DEFAULT_ROUTING_KEY = CELERY_QUEUE
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 64
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
PROCRASTINATE_IMPORT_PATHS = ("bench.django_site.benchapp.jobs",)
PROCRASTINATE_AUTODISCOVER_MODULE_NAME = None
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
