"""App: the task registry bound to a connector; opens it, defers by name, runs workers."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Generator, Iterable, Iterator
from types import TracebackType
from typing import Any

from procrastinate_core import builtin_tasks, exceptions, flow, validation
from procrastinate_core.blueprints import Blueprint
from procrastinate_core.connectors.base import BaseConnector
from procrastinate_core.deferrer import JobDeferrer
from procrastinate_core.manager import JobManager
from procrastinate_core.options import WorkerOptions
from procrastinate_core.schema import SchemaManager
from procrastinate_core.tasks import make_job

logger = logging.getLogger(__name__)


class App(Blueprint):
    """Holds the tasks and the connector; the object users open, defer through, and run.

    `worker_defaults` are WorkerOptions applied to every worker of this app;
    `periodic_defaults` tune the periodic deferrer (`max_delay`: how far back
    missed ticks are caught up, in seconds). `max_payload_bytes` bounds the JSON
    text of one job's arguments, checked before anything is sent (docs/tasks.md).
    """

    def __init__(
        self,
        *,
        connector: BaseConnector,
        import_paths: Iterable[str] | None = None,
        worker_defaults: dict[str, Any] | None = None,
        periodic_defaults: dict[str, Any] | None = None,
        max_payload_bytes: int = validation.DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        super().__init__()
        _check_connector(connector, "App(connector=...)")
        self.connector = connector
        # Checked once, here: a bad option fails at construction, not at a worker's start.
        self.import_paths = list(validation.check_import_paths(import_paths))
        self.worker_defaults = dict(worker_defaults or {})
        WorkerOptions.build(self.worker_defaults)  # fail now on a bad default
        #: frozen, validated; `periodic_defaults` stays readable as a dict
        self.periodic_options = validation.PeriodicOptions.build(periodic_defaults)
        self.periodic_defaults = self.periodic_options.as_dict()
        self.max_payload_bytes = validation.check_max_payload_bytes(max_payload_bytes)
        self.job_manager = JobManager(connector, max_payload_bytes=self.max_payload_bytes)
        self.schema_manager = SchemaManager(connector)
        self.derived_from: App | None = None
        builtin_tasks.register(self)

    def _bound_app(self) -> App:
        return self

    @classmethod
    def from_path(cls, dotted_path: str) -> App:
        """The App at `module.path.attribute` (or `module.path:attribute`)."""
        module_path, _, attribute = dotted_path.replace(":", ".").rpartition(".")
        if not module_path:
            raise exceptions.LoadFromPathError(
                f"{dotted_path!r} is not a dotted path to an App (expected 'package.module.app')"
            )
        try:
            module = importlib.import_module(module_path)
        except Exception as exc:
            raise exceptions.LoadFromPathError(
                f"cannot import module {module_path!r} for app {dotted_path!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        app = getattr(module, attribute, None)
        if not isinstance(app, App):
            raise exceptions.LoadFromPathError(
                f"{dotted_path!r}: module {module_path!r} has no App named {attribute!r} "
                f"(found {type(app).__name__})"
            )
        return app

    def with_connector(self, connector: BaseConnector) -> App:
        """A new App on another connector, sharing this one's task registry."""
        app = App(
            connector=connector,
            import_paths=self.import_paths,
            worker_defaults=self.worker_defaults,
            periodic_defaults=self.periodic_defaults,
            max_payload_bytes=self.max_payload_bytes,
        )
        app.tasks = self.tasks
        app.periodic_tasks = self.periodic_tasks
        app.job_manager.defer_hook = self.job_manager.defer_hook  # traced defers (otel.py)
        #: the App this one was made from (builtin_tasks defers through that one)
        app.derived_from = self
        return app

    @contextlib.contextmanager
    def replace_connector(self, connector: BaseConnector) -> Iterator[App]:
        """This same App on `connector` inside the block; the old connector is back after.

        For tests: tasks are bound to the App their module decorated them with,
        so swapping its connector (for an InMemoryConnector, say) reroutes every
        defer and worker without touching the code under test. It changes the
        App for every thread; outside tests, build a second App with
        with_connector(). Opening and closing `connector` stay the caller's.
        """
        _check_connector(connector, "replace_connector(...)")
        saved = (self.connector, self.job_manager, self.schema_manager)
        self.connector = connector
        self.job_manager = JobManager(connector, max_payload_bytes=self.max_payload_bytes)
        self.job_manager.defer_hook = saved[1].defer_hook
        self.schema_manager = SchemaManager(connector)
        try:
            yield self
        finally:
            self.connector, self.job_manager, self.schema_manager = saved

    def perform_import_paths(self) -> None:
        """Import the modules that declare tasks; a failure names the module and its error."""
        for path in self.import_paths:
            try:
                importlib.import_module(path)
            except Exception as exc:
                raise exceptions.LoadFromPathError(
                    f"cannot import task module {path!r} (listed in import_paths): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        logger.debug(
            "Imported task modules %s; %d tasks registered",
            self.import_paths,
            len(self.tasks),
            extra={"action": "imported_tasks", "tasks": sorted(self.tasks)},
        )

    def configure_task(
        self, name: str, *, allow_unknown: bool = True, **options: Any
    ) -> JobDeferrer:
        """A deferrer for a task known only by name (no import of its code needed)."""
        connection = options.pop("connection", None)  # the caller's transaction, if any
        task = self.tasks.get(name)
        if task is not None:
            # Through *this* app's connector, even for a task registered on the app
            # this one was made from with with_connector().
            configured = task.configure(**options)
            return JobDeferrer(
                self.job_manager,
                configured.job,
                connection=connection,
                flow_options=configured.flow,
                durable=configured.durable,
            )
        if not allow_unknown:
            raise exceptions.TaskNotFound(
                f"task {name!r} is not registered; known tasks: {sorted(self.tasks)}. "
                f"Import paths: {self.import_paths}."
            )
        flow_options = {k: options.pop(k) for k in list(options) if k in flow.OPTION_NAMES}
        durable = options.pop("durable", True)
        return JobDeferrer(
            self.job_manager,
            make_job(name, **options),
            connection=connection,
            flow_options=flow.build(**flow_options),
            durable=durable,
        )

    # -- opening and closing -------------------------------------------------
    def check_connection(self) -> bool:
        """Whether the database answers and holds the schema (procrastinate's App method)."""
        return self.job_manager.check_connection()

    async def check_connection_async(self) -> bool:
        return await self.job_manager.check_connection_async()

    def open(self, pool_or_engine: Any = None) -> App:
        """Open for sync use (`with app.open():`); pass your own pool or engine to share it."""
        self.connector.get_sync_connector().open(pool_or_engine)
        return self

    def close(self) -> None:
        self.connector.close()

    def __enter__(self) -> App:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open_async(self, pool: Any = None) -> _OpenAsync:
        """Open for async use: `await app.open_async()` or `async with app.open_async():`."""
        return _OpenAsync(self, pool)

    async def close_async(self) -> None:
        await self.connector.close_async()

    # -- workers -------------------------------------------------------------
    def _check_can_run_worker(self) -> None:
        if not self.connector.is_async:
            raise exceptions.SyncConnectorConfigurationError(
                f"{type(self.connector).__name__} cannot run a worker: it is a sync "
                "connector, made for deferring jobs. Run workers with an async connector "
                "(PsycopgConnector or AiopgConnector), e.g. "
                "app.with_connector(PsycopgConnector(...)).run_worker()."
            )

    async def run_worker_async(self, **options: Any) -> None:
        """Run a worker on this (opened) app until stopped, or until idle with wait=False."""
        self._check_can_run_worker()
        from procrastinate_core.worker import Worker

        worker = Worker(self, WorkerOptions.build(self.worker_defaults, options))
        await worker.run()

    def run_worker(self, **options: Any) -> None:
        """Open the app's async connector, run a worker in a new event loop, close."""
        self._check_can_run_worker()

        async def main() -> None:
            async with self.open_async():
                await self.run_worker_async(**options)

        asyncio.run(main())


def _check_connector(connector: Any, where: str) -> None:
    if not isinstance(connector, BaseConnector):
        raise exceptions.ConfigurationError(
            f"{where}: got {connector!r}; expected a connector such as "
            "PsycopgConnector(...) or SyncPsycopgConnector(...)"
        )


class _OpenAsync:
    """What open_async() returns: awaitable, and usable with `async with`."""

    def __init__(self, app: App, pool: Any) -> None:
        self.app = app
        self.pool = pool

    def __await__(self) -> Generator[Any, None, App]:
        yield from self.app.connector.open_async(self.pool).__await__()
        return self.app

    async def __aenter__(self) -> App:
        await self.app.connector.open_async(self.pool)
        return self.app

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.app.close_async()
