"""The App of a Django project: defers through Django's connection, runs workers on a pool.

`procrastinate_django.app` is a lazy object: it becomes a `DjangoApp` built
from the PROCRASTINATE_* settings the first time it is used (decorating a
task counts), which is after Django's settings are configured. Invalid
settings do not break that creation: they are reported by the system checks
(procrastinate_django/checks.py), and the App falls back to the default.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any

from django.utils.functional import SimpleLazyObject

from procrastinate_core import exceptions, validation
from procrastinate_core.app import App
from procrastinate_core.connectors.base import BaseConnector
from procrastinate_core.options import WorkerOptions
from procrastinate_django import db_connections
from procrastinate_django.connector import DjangoConnector, build_connector
from procrastinate_django.settings import DEFAULTS, settings

logger = logging.getLogger(__name__)


def import_dotted(path: str, setting: str) -> Any:
    """The object at `package.module.attribute`; the error names the setting."""
    module_path, _, attribute = str(path).replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_path), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise exceptions.ConfigurationError(
            f"PROCRASTINATE_{setting}={path!r} cannot be imported ({type(exc).__name__}: {exc}); "
            "give the dotted path of a callable, e.g. 'myproject.json.dumps'."
        ) from exc


class DjangoApp(App):
    """An App whose connector is Django's connection, and whose workers get their own pool.

    `run_worker` / `run_worker_async` build an async connector from the same
    DATABASES entry (PROCRASTINATE_CONNECTOR picks the driver) and run the
    worker on `app.with_connector(...)`, sharing this app's tasks.
    """

    def __init__(
        self,
        *,
        connector: BaseConnector | None = None,
        database_alias: str = "default",
        worker_backend: str = "psycopg",
        worker_connector_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(connector=connector or DjangoConnector(database_alias), **kwargs)
        self.database_alias = database_alias
        self.worker_backend = worker_backend
        self.worker_connector_options = dict(worker_connector_options or {})

    def make_worker_connector(self) -> BaseConnector:
        """A new connector for workers and the CLI, on the same database as the views."""
        return build_connector(
            self.database_alias,
            self.worker_backend,
            json_dumps=self.connector.json_dumps,
            json_loads=self.connector.json_loads,
            **self.worker_connector_options,
        )

    def worker_app(self) -> App:
        """This app's tasks on a new async connector (not opened): what workers run on."""
        connector = self.connector if self.connector.is_async else self.make_worker_connector()
        if not connector.is_async:
            raise exceptions.SyncConnectorConfigurationError(
                f"PROCRASTINATE_CONNECTOR={self.worker_backend!r} gives a sync connector "
                f"({type(connector).__name__}), which cannot run a worker; set "
                "PROCRASTINATE_CONNECTOR to 'psycopg' (default) or 'aiopg'."
            )
        self._prepare_tasks()
        return self.with_connector(connector)

    def _prepare_tasks(self) -> None:
        if settings.CLOSE_DB_CONNECTIONS:
            db_connections.install(self)

    async def run_worker_async(self, **options: Any) -> None:
        """Run a worker on a fresh pool (opened and closed here) until stopped or idle.

        On an async connector of its own (`replace_connector(...)` in tests), the
        worker runs on it, opened by the caller as for any App.
        """
        if self.connector.is_async:
            self._prepare_tasks()
            await super().run_worker_async(**options)
            return
        worker_app = self.worker_app()
        async with worker_app.open_async():
            await worker_app.run_worker_async(**options)

    def run_worker(self, **options: Any) -> None:
        if self.connector.is_async:  # opened and closed here, as App.run_worker does
            self._prepare_tasks()
            super().run_worker(**options)
            return
        asyncio.run(self.run_worker_async(**options))


def _or_default(name: str, check: Any) -> Any:
    """The setting's value if `check(value)` accepts it, else its default (checks report it)."""
    value = getattr(settings, name)
    try:
        return check(value)
    except Exception:  # noqa: BLE001 - reported by the system checks, with the setting's name
        logger.debug("Ignoring invalid PROCRASTINATE_%s; see `manage.py check`", name)
        return check(getattr(DEFAULTS, name))


def _hook(name: str) -> Any:
    def check(path: str | None) -> Any:
        return None if path is None else import_dotted(path, name)

    return _or_default(name, check)


def _worker_defaults(value: dict[str, Any] | None) -> dict[str, Any]:
    defaults = dict(value or {})
    WorkerOptions.build(defaults)
    return defaults


def _import_paths(value: Any) -> list[str]:
    return list(validation.check_import_paths(value, where="PROCRASTINATE_IMPORT_PATHS"))


def _periodic_defaults(value: dict[str, Any] | None) -> dict[str, Any]:
    return validation.PeriodicOptions.build(value).as_dict()


def build_app() -> DjangoApp:
    """The project's App, from the PROCRASTINATE_* settings."""
    connector = DjangoConnector(
        settings.DATABASE_ALIAS, json_dumps=_hook("JSON_DUMPS"), json_loads=_hook("JSON_LOADS")
    )
    return DjangoApp(
        connector=connector,
        database_alias=settings.DATABASE_ALIAS,
        worker_backend=settings.CONNECTOR,
        worker_connector_options=_or_default("CONNECTOR_OPTIONS", lambda v: dict(v or {})),
        import_paths=_or_default("IMPORT_PATHS", _import_paths),
        worker_defaults=_or_default("WORKER_DEFAULTS", _worker_defaults),
        periodic_defaults=_or_default("PERIODIC_DEFAULTS", _periodic_defaults),
    )


#: The App to decorate tasks with: `@app.task`. Built on first use.
app: DjangoApp = SimpleLazyObject(build_app)

#: The same App under procrastinate.contrib.django's name (its testing guide patches it).
current_app = app
