"""Django settings for tests/django: the test database is found like the rest of the suite's.

tests.support.database.find_server() picks PROCRASTINATE_TEST_DSN / DATABASE_URL,
PG*, 127.0.0.1:5432 or an embedded pgserver; pytest-django then creates
`test_<NAME>` on it. NAME carries the pid so parallel runs never share a database.
"""

from __future__ import annotations

import os

from tests.support.database import find_server

_server = find_server()
_params = _server.params

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.django.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "procrastinate_django",
    "tests.django.testapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": f"pcq_django_{os.getpid()}",
        "USER": _params.get("user", ""),
        "PASSWORD": _params.get("password", ""),
        "HOST": _params.get("host", ""),
        "PORT": _params.get("port", ""),
        "OPTIONS": {
            k: v
            for k, v in _params.items()
            if k not in {"user", "password", "host", "port", "dbname"}
        },
        "ATOMIC_REQUESTS": True,
        "TEST": {"NAME": f"test_pcq_django_{os.getpid()}"},
    },
}
DATABASE_ROUTERS: list[str] = []

STATIC_URL = "/static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

PROCRASTINATE_WORKER_DEFAULTS = {
    "fetch_job_polling_interval": 0.2,
    "abort_job_polling_interval": 0.2,
    "install_signal_handlers": False,
}

# django.tasks on our queue (tests/django/test_tasks_backend*.py; tasks in
# tests/django/django_tasks_app).
TASKS = {
    "default": {
        "BACKEND": "procrastinate_django.tasks_backend.ProcrastinateBackend",
        "QUEUES": ["default", "emails", "reports"],
    },
}
