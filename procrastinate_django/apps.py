"""The Django AppConfig: finds the project's tasks and keeps the queue schema current."""

from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate

logger = logging.getLogger(__name__)


def discover_task_modules(module_name: str | None) -> list[str]:
    """Import `<app>.<module_name>` for every installed app that has one; their names."""
    if not module_name:
        return []
    from importlib.util import find_spec

    found = []
    for config in apps.get_app_configs():
        candidate = f"{config.name}.{module_name}"
        try:
            spec = find_spec(candidate)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found.append(candidate)
    return found


class ProcrastinateConfig(AppConfig):
    name = "procrastinate_django"
    label = "procrastinate_django"
    verbose_name = "Task queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from procrastinate_django import checks  # noqa: F401 - registers the system checks
        from procrastinate_django.procrastinate_app import app, import_dotted
        from procrastinate_django.settings import settings

        discovered = discover_task_modules(settings.AUTODISCOVER_MODULE_NAME)
        app.import_paths = list(dict.fromkeys([*discovered, *app.import_paths]))
        app.perform_import_paths()
        register_django_tasks_runner()
        if isinstance(settings.ON_APP_READY, str):
            import_dotted(settings.ON_APP_READY, "ON_APP_READY")(app)
        post_migrate.connect(apply_missing_migrations, sender=self)

    @property
    def app(self) -> Any:
        from procrastinate_django.procrastinate_app import app

        return app


def register_django_tasks_runner() -> None:
    """Register the runner of django.tasks jobs (tasks_backend.py), on Django >= 6.0 only."""
    from importlib.util import find_spec

    if find_spec("django.tasks") is not None:
        from procrastinate_django import django_tasks_runner  # noqa: F401 - registers it


def apply_missing_migrations(using: str = "default", **kwargs: Any) -> None:
    """After `migrate`, apply core migrations newer than our Django migrations know of."""
    from procrastinate_django.schema_migration import apply_schema
    from procrastinate_django.settings import settings

    if using == settings.DATABASE_ALIAS:
        apply_schema(using, only_if_installed=True)
