"""System checks: every PROCRASTINATE_* setting validated at startup, with the setting named.

Run by `manage.py check`, `runserver`, `migrate` and `manage.py procrastinate`;
an error stops them before anything touches the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings as django_settings
from django.core import checks

from procrastinate_core import exceptions, validation
from procrastinate_core.options import WorkerOptions
from procrastinate_django.settings import CONNECTOR_BACKENDS, NAMES, settings

Check = Callable[[Any], str | None]


def _error(setting: str, message: str, number: int, hint: str | None = None) -> checks.Error:
    return checks.Error(
        f"PROCRASTINATE_{setting}: {message}", hint=hint, id=f"procrastinate_django.E{number:03d}"
    )


def _database_alias(alias: Any) -> list[checks.CheckMessage]:
    if alias not in django_settings.DATABASES:
        return [
            _error(
                "DATABASE_ALIAS",
                f"{alias!r} is not an alias of DATABASES (aliases: "
                f"{sorted(django_settings.DATABASES)}).",
                1,
                "Set PROCRASTINATE_DATABASE_ALIAS to the alias of a PostgreSQL database.",
            )
        ]
    engine = django_settings.DATABASES[alias].get("ENGINE", "")
    if "postgresql" not in engine and "postgis" not in engine:
        return [
            _error(
                "DATABASE_ALIAS",
                f"DATABASES[{alias!r}] uses ENGINE {engine!r}; procrastinate_django needs "
                "PostgreSQL.",
                2,
                "Use 'django.db.backends.postgresql', or point PROCRASTINATE_DATABASE_ALIAS "
                "at a PostgreSQL database.",
            )
        ]
    return []


def _dotted_callable(setting: str) -> Check:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            return f"expected a dotted path (a string) to a callable, got {value!r}."
        from procrastinate_django.procrastinate_app import import_dotted

        try:
            found = import_dotted(value, setting)
        except exceptions.ConfigurationError as exc:
            return str(exc).removeprefix(f"PROCRASTINATE_{setting}=")
        if not callable(found):
            return f"{value!r} is not callable."
        return None

    return check


def _connector(value: Any) -> str | None:
    if value not in CONNECTOR_BACKENDS:
        return f"{value!r} is not a connector backend; use one of {list(CONNECTOR_BACKENDS)}."
    return None


def _optional_dict(value: Any) -> str | None:
    if value is not None and not isinstance(value, dict):
        return f"expected a dict (or None), got {type(value).__name__} {value!r}."
    return None


def _module_name(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.isidentifier()):
        return (
            "expected a module name such as 'tasks' (or None to turn autodiscovery off), got "
            f"{value!r}."
        )
    return None


def _import_paths(value: Any) -> str | None:
    return _problem_of(lambda: validation.check_import_paths(value, where="import_paths"))


def _problem_of(validate: Callable[[], Any]) -> str | None:
    """The message of the core validator's ConfigurationError, or None: one rule, stated once."""
    try:
        validate()
    except exceptions.ConfigurationError as exc:
        # The setting's name replaces the App argument's ("import_paths: ...").
        return str(exc).split(": ", 1)[-1].rstrip(".") + "."
    return None


def _worker_defaults(value: Any) -> str | None:
    problem = _optional_dict(value)
    if problem:
        return problem
    try:
        WorkerOptions.build(value or {})
    except (exceptions.ConfigurationError, TypeError) as exc:  # TypeError: uncallable middleware
        return f"{exc}."
    return None


def _periodic_defaults(value: Any) -> str | None:
    return _problem_of(lambda: validation.PeriodicOptions.build(value))  # "periodic_defaults: ..."


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected True or False, got {value!r}."


_CHECKS: dict[str, tuple[int, Check]] = {
    "CONNECTOR": (3, _connector),
    "CONNECTOR_OPTIONS": (4, _optional_dict),
    "AUTODISCOVER_MODULE_NAME": (5, _module_name),
    "IMPORT_PATHS": (6, _import_paths),
    "WORKER_DEFAULTS": (7, _worker_defaults),
    "PERIODIC_DEFAULTS": (8, _periodic_defaults),
    "JSON_DUMPS": (9, _dotted_callable("JSON_DUMPS")),
    "JSON_LOADS": (10, _dotted_callable("JSON_LOADS")),
    "ON_APP_READY": (11, _dotted_callable("ON_APP_READY")),
    "CLOSE_DB_CONNECTIONS": (12, _bool),
    "READONLY_MODELS": (13, _bool),
}


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every PROCRASTINATE_* setting, and unknown ones (likely typos) as warnings."""
    messages: list[checks.CheckMessage] = list(_database_alias(settings.DATABASE_ALIAS))
    for name, (number, check) in _CHECKS.items():
        problem = check(getattr(settings, name))
        if problem:
            messages.append(_error(name, problem, number))
    for name in dir(django_settings):
        if name.startswith("PROCRASTINATE_") and name.removeprefix("PROCRASTINATE_") not in NAMES:
            messages.append(
                checks.Warning(
                    f"{name} is not a setting of procrastinate_django (a typo?).",
                    hint=f"Known settings: {', '.join('PROCRASTINATE_' + n for n in NAMES)}.",
                    id="procrastinate_django.W001",
                )
            )
    return messages


@checks.register()
def check_schema_applied(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A warning while the queue's migrations are not applied (defer would fail on missing tables).

    It reads the database, so it says nothing when the database cannot be reached
    (connection problems are reported by whatever uses it first).
    """
    from django.db import connections

    from procrastinate_core.schema import SchemaManager
    from procrastinate_django.connector import DjangoConnector

    alias = settings.DATABASE_ALIAS
    if alias not in django_settings.DATABASES or connections[alias].vendor != "postgresql":
        return []  # reported by check_settings
    try:
        status = SchemaManager(DjangoConnector(alias)).get_status()
    except Exception:  # noqa: BLE001 - unreachable database, or database access not allowed here
        return []
    if status.is_current:
        return []
    return [
        checks.Warning(
            f"The task queue's schema on DATABASES[{alias!r}] is not up to date: "
            f"{status.describe()}.",
            hint="Run `python manage.py migrate` (it applies procrastinate_django's migrations).",
            id="procrastinate_django.W002",
        )
    ]
