"""Every PROCRASTINATE_* setting, its default and its meaning, in one place.

Read them through `settings.NAME` (for PROCRASTINATE_NAME): the value comes
from Django's settings when set there, else from the default below. Worker
defaults are not restated here: they are procrastinate_core.options.WorkerOptions'.
Bad values are reported by the system checks in procrastinate_django/checks.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.conf import settings as django_settings

#: The connector backends PROCRASTINATE_CONNECTOR accepts, and what each one builds.
CONNECTOR_BACKENDS = ("psycopg", "aiopg", "psycopg2", "sqlalchemy")


@dataclasses.dataclass(frozen=True)
class Defaults:
    """The default of each setting; the docstring of each field says what it does."""

    #: Alias in DATABASES of the PostgreSQL database that holds the queue.
    DATABASE_ALIAS: str = "default"
    #: Driver of the worker's connector: one of CONNECTOR_BACKENDS. Views always
    #: defer through Django's own connection.
    CONNECTOR: str = "psycopg"
    #: Extra keyword arguments for the worker's connector (pool sizes, ...).
    CONNECTOR_OPTIONS: dict[str, Any] | None = None
    #: Module name looked for in every installed app (None: no autodiscovery).
    AUTODISCOVER_MODULE_NAME: str | None = "tasks"
    #: More modules to import for their tasks, besides the autodiscovered ones.
    IMPORT_PATHS: tuple[str, ...] = ()
    #: Worker options (names and defaults: procrastinate_core.options.WorkerOptions).
    WORKER_DEFAULTS: dict[str, Any] | None = None
    #: Periodic deferrer options; `max_delay`: how far back missed ticks are caught up.
    PERIODIC_DEFAULTS: dict[str, Any] | None = None
    #: Dotted path of a json.dumps-like callable used for job arguments and results.
    JSON_DUMPS: str | None = None
    #: Dotted path of a json.loads-like callable (the counterpart of JSON_DUMPS).
    JSON_LOADS: str | None = None
    #: Dotted path of a callable receiving the App once it is ready (add blueprints...).
    ON_APP_READY: str | None = None
    #: Close stale ORM connections around every sync job the worker runs.
    CLOSE_DB_CONNECTIONS: bool = True
    #: False lets tests save and delete queue rows through the ORM models (fixtures);
    #: for tests only: the ORM knows none of the queue's rules (locks, statuses).
    READONLY_MODELS: bool = True
    #: A secret a Prometheus scraper sends as `Authorization: Bearer <token>` to read
    #: procrastinate_django.metrics.metrics_view; None: only staff who may view jobs.
    METRICS_TOKEN: str | None = None


DEFAULTS = Defaults()
NAMES = tuple(field.name for field in dataclasses.fields(Defaults))


class _Settings:
    """Attribute access to PROCRASTINATE_* settings with their defaults."""

    def __getattr__(self, name: str) -> Any:
        if name not in NAMES:
            raise AttributeError(f"unknown setting PROCRASTINATE_{name}; known: {list(NAMES)}")
        return getattr(django_settings, f"PROCRASTINATE_{name}", getattr(DEFAULTS, name))


settings = _Settings()
