"""Connectors built from Django's DATABASES: Django's own connection for views, a pool for workers.

`DjangoConnector` runs every named query through `django.db.connections[alias]`,
so a `defer` inside `transaction.atomic()` joins that transaction: rolled back
with it, visible to workers (and their NOTIFY sent) only at commit. It is a
sync connector; its async methods hop onto Django's connection thread with
asgiref (as Django's async ORM does), so `await task.defer_async()` in an
async view works the same way. Workers need LISTEN and their own pool: they
get `build_connector()`, made from the same DATABASES entry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async

from procrastinate_core import exceptions, sql
from procrastinate_core.connectors import errors
from procrastinate_core.connectors.base import BaseConnector, BaseSyncConnector, Fetch, Params
from procrastinate_core.connectors.params import LIBPQ_KEYWORDS
from procrastinate_core.serialization import JsonDumps, JsonLoads


def _connection(alias: str) -> Any:
    from django.db import connections

    return connections[alias]


def connector_params(alias: str = "default") -> dict[str, Any]:
    """The libpq keywords Django itself would connect with for DATABASES[alias].

    Django computes them (NAME, USER, PASSWORD, HOST, PORT, and OPTIONS such
    as sslmode, service or passfile); we keep the libpq ones, so a worker
    reaches exactly the database the views use (the test database in tests).
    """
    connection = _connection(alias)
    if connection.vendor != "postgresql":
        raise exceptions.ConfigurationError(
            f"DATABASES[{alias!r}] uses the {connection.vendor!r} backend; procrastinate_django "
            "needs PostgreSQL. Point PROCRASTINATE_DATABASE_ALIAS at a database whose ENGINE "
            "is 'django.db.backends.postgresql'."
        )
    raw = connection.get_connection_params()
    return {
        key: value
        for key, value in raw.items()
        if key in LIBPQ_KEYWORDS and value not in (None, "")
    }


def build_connector(
    alias: str = "default",
    backend: str = "psycopg",
    *,
    json_dumps: JsonDumps | None = None,
    json_loads: JsonLoads | None = None,
    **options: Any,
) -> BaseConnector:
    """A connector of `backend` (see settings.CONNECTOR_BACKENDS) on DATABASES[alias].

    `options` go to the connector (pool sizes...); libpq keywords from Django win
    over nothing: an option named like one overrides Django's value.
    PROCRASTINATE_POOLER and PROCRASTINATE_LISTEN_DSN (async backends only: the
    listener) are the defaults of the `pooler` and `listen_dsn` options.
    """
    import procrastinate_core as pc
    from procrastinate_django.settings import settings

    params = {**connector_params(alias), **options}
    if settings.POOLER is not None:
        params.setdefault("pooler", settings.POOLER)
    if settings.LISTEN_DSN is not None and backend in ("psycopg", "aiopg"):
        params.setdefault("listen_dsn", settings.LISTEN_DSN)
    hooks: dict[str, Any] = {"json_dumps": json_dumps, "json_loads": json_loads}
    if backend == "psycopg":
        return pc.PsycopgConnector(**hooks, **params)
    if backend == "aiopg":
        return pc.AiopgConnector(**hooks, **params)
    if backend == "psycopg2":
        return pc.Psycopg2Connector(**hooks, **params)
    if backend == "sqlalchemy":
        return pc.SQLAlchemyPsycopg2Connector(**hooks, **params)
    raise exceptions.ConfigurationError(
        f"PROCRASTINATE_CONNECTOR={backend!r} is not a known backend; use one of "
        "'psycopg', 'aiopg', 'psycopg2', 'sqlalchemy'."
    )


_helper_thread = ThreadPoolExecutor(1, thread_name_prefix="pcq-django-sync")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _off_loop(function: Callable[..., Any], *args: Any) -> Any:
    """Run a sync database call on the helper thread; its connections are closed after."""

    def call() -> Any:
        from django.db import connections

        try:
            return function(*args)
        finally:
            for connection in connections.all(initialized_only=True):
                connection.close()

    return _helper_thread.submit(call).result()


def _fetch(cursor: Any, fetch: str) -> Any:
    if fetch == "none":
        return None
    if cursor.description is None:
        return None if fetch == "one" else []
    columns = [column[0] for column in cursor.description]
    if fetch == "one":
        row = cursor.fetchone()
        return None if row is None else dict(zip(columns, row, strict=True))
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


class DjangoConnector(BaseSyncConnector):
    """Runs queries on Django's connection `alias`, inside the caller's transaction if any.

    Django owns the connection: open() only checks that the database answers
    (it is optional), close() does nothing. Inside an atomic block a query runs
    as one statement of the caller's transaction, with no savepoint around it
    (a savepoint costs two round trips per defer): no query raises a refusal
    (a held queueing lock or a unique conflict comes back as a row, and bad
    input is refused before any SQL), so the caller's transaction stays usable.
    """

    # Async callers (async views, async tasks) use the thread Django's async ORM
    # uses, so they share its connection and transaction state.
    thread_sensitive = True

    def __init__(
        self,
        alias: str = "default",
        *,
        json_dumps: JsonDumps | None = None,
        json_loads: JsonLoads | None = None,
    ) -> None:
        super().__init__(json_dumps=json_dumps, json_loads=json_loads)
        self.alias = alias

    def __repr__(self) -> str:
        return f"DjangoConnector(alias={self.alias!r})"

    @property
    def connection(self) -> Any:
        """Django's connection wrapper for this alias (thread-local, like the ORM's)."""
        return _connection(self.alias)

    def get_worker_connector(self) -> BaseConnector:
        """A new connector on the same database for running a worker (not opened).

        Workers cannot use Django's connection (they LISTEN and need a pool). The
        driver and its options come from PROCRASTINATE_CONNECTOR and
        PROCRASTINATE_CONNECTOR_OPTIONS, the JSON hooks from this connector; the
        name is procrastinate's, for tests written as
        `with app.replace_connector(app.connector.get_worker_connector()): ...`.
        """
        from procrastinate_django.settings import settings

        return build_connector(
            self.alias,
            settings.CONNECTOR,
            json_dumps=self.json_dumps,
            json_loads=self.json_loads,
            **dict(settings.CONNECTOR_OPTIONS or {}),
        )

    def open(self, pool: Any = None) -> None:
        """Optional (Django opens connections itself): checks that the database answers."""
        if pool is not None:
            raise exceptions.ConfigurationError(
                "DjangoConnector.open() takes no pool: it uses Django's connection "
                f"{self.alias!r}; configure it in DATABASES instead."
            )
        if _loop_running():
            _off_loop(self._check_reachable)
        else:
            self._check_reachable()

    def _check_reachable(self) -> None:
        with errors.translated(self._target):
            self.connection.ensure_connection()

    def close(self) -> None:
        """Nothing to do: Django opens and closes its connections itself."""

    def _target(self) -> str:
        settings_dict = self.connection.settings_dict
        return errors.describe_target(
            {
                "host": settings_dict.get("HOST"),
                "port": settings_dict.get("PORT"),
                "dbname": settings_dict.get("NAME"),
                "user": settings_dict.get("USER"),
            }
        )

    def run_query(
        self, name: str, query_params: Params | None, connection: Any, fetch: Fetch
    ) -> Any:
        if connection is None and _loop_running():
            # Django refuses queries from a thread running an event loop (a sync
            # defer in async code); no Django transaction can be open there, so
            # run it on a helper thread, blocking like any sync call.
            return _off_loop(self.run_query, name, query_params, None, fetch)
        text = sql.query(name)
        connection = self.connection if connection is None else connection
        with errors.translated(self._target):
            with connection.cursor() as cursor:
                cursor.execute(text, dict(query_params or {}))
                return _fetch(cursor, fetch)

    def joins_caller_transaction(self) -> bool:
        """Inside the caller's atomic block; a defer from a running event loop goes to a
        helper thread, outside any."""
        return not _loop_running() and bool(self.connection.in_atomic_block)

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """`transaction.atomic()` on this alias (a savepoint inside the caller's);
        yields the connection."""
        if _loop_running():  # queries go to a helper thread: no shared transaction there
            return contextlib.nullcontext(None)
        return self._atomic()

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[Any]:
        from django.db import transaction

        with errors.translated(self._target), transaction.atomic(using=self.alias):
            yield self.connection

    def execute_script(self, script: str) -> None:
        """Run a migration script in one transaction (a savepoint inside Django's migrate)."""
        from django.db import transaction

        if _loop_running():
            _off_loop(self.execute_script, script)
            return
        with errors.translated(self._target):
            with transaction.atomic(using=self.alias), self.connection.cursor() as cursor:
                cursor.execute(script)

    async def open_async(self, pool: Any = None) -> None:
        if pool is not None:
            self.open(pool)
        await sync_to_async(self._check_reachable)()

    async def close_async(self) -> None:
        self.close()
