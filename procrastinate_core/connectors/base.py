"""The connector contract: the one interface through which every query runs.

A connector is small on purpose: open/close, run a named query (no result, one
row, all rows), run a migration script, and, for async connectors, listen to
notifications. Queries are passed by *name* (see procrastinate_core/sql);
real connectors look the text up, the in-memory one dispatches on the name.
Rows come back as dicts. Parameters are always bound by the driver.

Sync connectors get their async methods for free (run in a thread through
asgiref's sync_to_async); async connectors hand out a sync counterpart through
`get_sync_connector()` (see connectors/sync_bridge.py). Nothing is written twice.
"""

from __future__ import annotations

import abc
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

from asgiref.sync import sync_to_async

from procrastinate_core import exceptions
from procrastinate_core.serialization import JsonDumps, JsonLoads

Params = Mapping[str, Any]
Row = dict[str, Any]
#: What a query returns: nothing, one row (or None), or every row.
Fetch = Literal["none", "one", "all"]
# on_notification(channel, payload); may be sync or async.
NotificationCallback = Callable[[str, str], Awaitable[None] | None]
ListeningCallback = Callable[[], Awaitable[None] | None]


class BaseConnector(abc.ABC):
    """What every connector offers; see the module docstring for the why."""

    #: True for connectors that can run a worker (listen, async queries natively).
    is_async: bool = False

    def __init__(
        self, *, json_dumps: JsonDumps | None = None, json_loads: JsonLoads | None = None
    ) -> None:
        self.json_dumps: JsonDumps = json_dumps or json.dumps
        self.json_loads: JsonLoads = json_loads or json.loads

    # -- lifecycle ---------------------------------------------------------
    @abc.abstractmethod
    def open(self, pool: Any = None) -> None:
        """Open the connector (creating its pool, or adopting `pool`); idempotent."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close what open() created; a pool passed in by the caller stays open."""

    @abc.abstractmethod
    async def open_async(self, pool: Any = None) -> None: ...

    @abc.abstractmethod
    async def close_async(self) -> None: ...

    # -- queries -------------------------------------------------------------
    # A connector implements run_query / run_query_async (and the scripts); the
    # execute_query* methods every caller uses are thin wrappers over them.
    @abc.abstractmethod
    def run_query(self, name: str, params: Params | None, connection: Any, fetch: Fetch) -> Any:
        """Run named query `name`; return None, one row (or None), or all rows, per `fetch`."""

    @abc.abstractmethod
    async def run_query_async(
        self, name: str, params: Params | None, connection: Any, fetch: Fetch
    ) -> Any: ...

    @abc.abstractmethod
    def execute_script(self, script: str) -> None:
        """Run a parameterless multi-statement script in one transaction (migrations)."""

    @abc.abstractmethod
    async def execute_script_async(self, script: str) -> None: ...

    # -- several statements, one transaction ----------------------------------------
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A transaction for several statements that stand or fall together; yields what
        to pass as their `connection=` (a batch_defer sent in chunks uses it).

        Commits when the block ends, rolls back if it raises. This default yields
        None and gives no atomicity: each statement then commits on its own.
        """
        return contextlib.nullcontext(None)

    def transaction_async(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return contextlib.nullcontext(None)

    def joins_caller_transaction(self) -> bool:
        """Whether a query run now without `connection=` would join a transaction the
        caller opened (Django's connection inside atomic()); a non-durable defer, whose
        setting would outlive it, refuses then. Pooled connectors never do."""
        return False

    async def joins_caller_transaction_async(self) -> bool:
        return False

    def execute_query(
        self, name: str, params: Params | None = None, *, connection: Any = None
    ) -> None:
        self.run_query(name, params, connection, "none")

    def execute_query_one(
        self, name: str, params: Params | None = None, *, connection: Any = None
    ) -> Row | None:
        row: Row | None = self.run_query(name, params, connection, "one")
        return row

    def execute_query_all(
        self, name: str, params: Params | None = None, *, connection: Any = None
    ) -> list[Row]:
        rows: list[Row] = self.run_query(name, params, connection, "all")
        return rows

    async def execute_query_async(
        self, name: str, params: Params | None = None, *, connection: Any = None
    ) -> None:
        await self.run_query_async(name, params, connection, "none")

    async def execute_query_one_async(
        self, name: str, params: Params | None = None, *, connection: Any = None
    ) -> Row | None:
        row: Row | None = await self.run_query_async(name, params, connection, "one")
        return row

    async def execute_query_all_async(
        self, name: str, params: Params | None = None, *, connection: Any = None
    ) -> list[Row]:
        rows: list[Row] = await self.run_query_async(name, params, connection, "all")
        return rows

    # -- notifications -------------------------------------------------------
    async def listen_notify(
        self,
        channels: Iterable[str],
        on_notification: NotificationCallback,
        on_listening: ListeningCallback | None = None,
    ) -> None:
        """Listen on `channels` until cancelled, calling on_notification(channel, payload).

        Must survive lost connections: reconnect with capped backoff and call
        `on_listening` after every (re)connection, so that the caller can look
        for work it may have missed while deaf.
        """
        raise exceptions.SyncConnectorConfigurationError(
            f"{type(self).__name__} cannot listen for notifications or run a worker: "
            "it is a sync connector, made for deferring jobs. Run workers with an async "
            "connector (PsycopgConnector or AiopgConnector)."
        )

    # -- sync/async selection ------------------------------------------------
    @abc.abstractmethod
    def get_sync_connector(self) -> BaseConnector:
        """The connector that sync operations (mainly `defer`) should use."""


class BaseSyncConnector(BaseConnector):
    """A connector whose driver is sync; its async methods run the sync ones in a thread."""

    is_async = False
    #: Run async callers' queries in asgiref's one shared thread (True, as Django's
    #: connections need) or in any worker thread (False).
    thread_sensitive = False

    def get_sync_connector(self) -> BaseConnector:
        return self

    async def open_async(self, pool: Any = None) -> None:
        await sync_to_async(self.open, thread_sensitive=self.thread_sensitive)(pool)

    async def close_async(self) -> None:
        await sync_to_async(self.close, thread_sensitive=self.thread_sensitive)()

    async def run_query_async(
        self, name: str, params: Params | None, connection: Any, fetch: Fetch
    ) -> Any:
        return await sync_to_async(self.run_query, thread_sensitive=self.thread_sensitive)(
            name, params, connection, fetch
        )

    async def execute_script_async(self, script: str) -> None:
        await sync_to_async(self.execute_script, thread_sensitive=self.thread_sensitive)(script)

    async def joins_caller_transaction_async(self) -> bool:
        """Asked in the thread the async queries run in (Django's, whose transaction counts)."""
        if type(self).joins_caller_transaction is BaseConnector.joins_caller_transaction:
            return False  # no hop for the connectors that never join one
        return await sync_to_async(
            self.joins_caller_transaction, thread_sensitive=self.thread_sensitive
        )()

    @contextlib.asynccontextmanager
    async def transaction_async(self) -> AsyncIterator[Any]:
        """transaction(), entered and left in a worker thread (the connection's, for Django)."""
        manager = self.transaction()

        def call(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
            return sync_to_async(function, thread_sensitive=self.thread_sensitive)

        connection = await call(manager.__enter__)()
        try:
            yield connection
        except BaseException as exc:
            if not await call(manager.__exit__)(type(exc), exc, exc.__traceback__):
                raise
        else:
            await call(manager.__exit__)(None, None, None)


class BaseAsyncConnector(BaseConnector):
    """A connector whose driver is async: it can run workers.

    Sync callers never use its sync methods directly; they go through
    `get_sync_connector()`, which gives a real sync counterpart before the
    connector is opened and a bridge onto this connector's event loop after.
    """

    is_async = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sync_counterpart: BaseConnector | None = None

    @property
    @abc.abstractmethod
    def is_open(self) -> bool: ...

    @abc.abstractmethod
    def make_sync_counterpart(self) -> BaseConnector:
        """A new sync connector with the same connection parameters and JSON hooks."""

    def get_sync_connector(self) -> BaseConnector:
        from procrastinate_core.connectors.sync_bridge import SyncBridge

        counterpart = self._sync_counterpart
        if counterpart is not None and getattr(counterpart, "is_open", False):
            return counterpart
        if self.is_open:
            return SyncBridge(self)
        if counterpart is None:
            counterpart = self._sync_counterpart = self.make_sync_counterpart()
        return counterpart

    # A sync call on an async connector goes to whatever get_sync_connector() picks.
    def open(self, pool: Any = None) -> None:
        self.get_sync_connector().open(pool)

    def close(self) -> None:
        if self._sync_counterpart is not None:
            self._sync_counterpart.close()

    def run_query(self, name: str, params: Params | None, connection: Any, fetch: Fetch) -> Any:
        return self.get_sync_connector().run_query(name, params, connection, fetch)

    def execute_script(self, script: str) -> None:
        self.get_sync_connector().execute_script(script)


class PooledConnector:
    """Mixin for connectors that hold a driver pool: one place for "is it open" and its error.

    Put it first among the bases (it provides `is_open` for BaseAsyncConnector).
    """

    is_async: bool
    _pool: Any = None
    #: False when the pool was handed to open() by the caller, who keeps owning it.
    _owns_pool: bool = False

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    @property
    def pool(self) -> Any:
        if self._pool is None:
            hint = (
                "`async with app.open_async():` (or `await app.open_async()`) before running "
                "queries"
                if self.is_async
                else "`with app.open():` (or `app.open()`) before deferring or running queries"
            )
            raise exceptions.AppNotOpen(f"{type(self).__name__} is not open: use {hint}.")
        return self._pool
