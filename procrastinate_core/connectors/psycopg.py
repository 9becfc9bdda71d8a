"""The psycopg 3 connectors: PsycopgConnector (async, runs workers) and SyncPsycopgConnector.

Both sit on psycopg_pool. Every pool argument passes through; libpq keywords
may be given at the top level, in `kwargs={...}`, in `conninfo=`, or come from
the PG* environment variables.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from procrastinate_core import exceptions, sql
from procrastinate_core.connectors import errors
from procrastinate_core.connectors.base import (
    BaseAsyncConnector,
    BaseConnector,
    BaseSyncConnector,
    Fetch,
    ListeningCallback,
    NotificationCallback,
    Params,
    PooledConnector,
)
from procrastinate_core.connectors.connection_settings import ConnectionSettings
from procrastinate_core.connectors.listener import listen_forever, poll_forever
from procrastinate_core.connectors.sync_bridge import record_open_loop
from procrastinate_core.serialization import JsonDumps, JsonLoads

logger = logging.getLogger(__name__)

_POOL_ARGUMENTS = (
    "conninfo",
    "connection_class",
    "kwargs",
    "min_size",
    "max_size",
    "open",
    "configure",
    "check",
    "reset",
    "name",
    "close_returns",
    "timeout",
    "max_waiting",
    "max_lifetime",
    "max_idle",
    "reconnect_timeout",
    "reconnect_failed",
    "num_workers",
)


def _import_psycopg() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:  # pragma: no cover - psycopg is a core dependency
        raise exceptions.MissingDriverError(
            f"psycopg 3 is not installed ({exc}); install it with "
            '`pip install "procrastinate-core"` (it is a core dependency).'
        ) from exc
    return psycopg, psycopg_pool


#: psycopg options (not libpq keywords) accepted in `kwargs={...}`.
_DRIVER_OPTIONS = ("autocommit", "prepare_threshold", "row_factory", "cursor_factory", "context")


class _PsycopgSettings(ConnectionSettings):
    """ConnectionSettings plus what psycopg 3 adds: `kwargs=` and prepared statements."""

    def __init__(self, connector: str, arguments: dict[str, Any], *, listens: bool) -> None:
        super().__init__(
            connector,
            arguments,
            dsn_name="conninfo",
            pool_arguments=_POOL_ARGUMENTS,
            driver_options=_DRIVER_OPTIONS,
            listens=listens,
        )
        self.pool_arguments.pop("open", None)  # we open explicitly, in open()/open_async()

    @property
    def conninfo(self) -> str:
        return self.dsn

    def connection_kwargs(self) -> dict[str, Any]:
        """What every pooled connection is opened with: autocommit, and no prepared
        statements behind a transaction pooler (they would land on another server
        connection) unless `kwargs={"prepare_threshold": N}` says the pooler keeps them."""
        kwargs = {**self.driver_options, **self.connect_kwargs()}
        if self.pooler == "transaction":
            kwargs.setdefault("prepare_threshold", None)
        kwargs["autocommit"] = True
        return kwargs


def _check_pool_factory(connector: str, pool_factory: object) -> Callable[..., Any] | None:
    if pool_factory is None or callable(pool_factory):
        return pool_factory
    raise TypeError(
        f"{connector}(pool_factory=...) must be a callable returning a psycopg_pool pool "
        f"(such as psycopg_pool.AsyncNullConnectionPool), not {type(pool_factory).__name__}"
    )


def _sync_pool_factory(pool_factory: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """The sync twin of an async pool factory: psycopg_pool's null pool maps to its sync null pool.

    Any other factory cannot be translated: the sync counterpart then uses
    psycopg_pool.ConnectionPool with the same arguments.
    """
    if pool_factory is None:
        return None
    _, psycopg_pool = _import_psycopg()
    if pool_factory is psycopg_pool.AsyncNullConnectionPool:
        return psycopg_pool.NullConnectionPool  # type: ignore[no-any-return]
    return None


@functools.cache
def _dict_row() -> Any:
    """psycopg's dict_row, imported on first use (every query asks for it)."""
    from psycopg.rows import dict_row

    return dict_row


class PsycopgConnector(PooledConnector, BaseAsyncConnector):
    """Async connector on psycopg 3's AsyncConnectionPool; the one to run workers with.

    Any argument of `psycopg_pool.AsyncConnectionPool` passes through
    (`conninfo`, `min_size`, `max_size`, `kwargs`, `timeout`, ...); libpq
    keywords (`host=`, `dbname=`, ...) may also be given directly.
    `pool_factory` builds the pool from those arguments (procrastinate's
    recipe behind PgBouncer: `psycopg_pool.AsyncNullConnectionPool`);
    `pooler` and `listen_dsn` say what sits in front of PostgreSQL
    (docs/pgbouncer.md).
    """

    def __init__(
        self,
        *,
        json_dumps: JsonDumps | None = None,
        json_loads: JsonLoads | None = None,
        listen_keepalive: float = 10.0,
        pool_factory: Callable[..., Any] | None = None,
        **arguments: Any,
    ) -> None:
        super().__init__(json_dumps=json_dumps, json_loads=json_loads)
        self._settings = _PsycopgSettings(type(self).__name__, arguments, listens=True)
        self.pool_factory = _check_pool_factory(type(self).__name__, pool_factory)
        self._pool: Any = None
        self._owns_pool = False
        self.listen_keepalive = listen_keepalive

    @property
    def wake_up_mode(self) -> str:
        """How a worker on this connector learns of new jobs (logged when it starts)."""
        return self._settings.wake_up_mode()

    def make_sync_counterpart(self) -> BaseConnector:
        return SyncPsycopgConnector(
            json_dumps=self.json_dumps,
            json_loads=self.json_loads,
            pool_factory=_sync_pool_factory(self.pool_factory),
            **self._settings.counterpart_arguments(),
        )

    async def open_async(self, pool: Any = None) -> None:
        if self._pool is not None:
            return
        psycopg, psycopg_pool = _import_psycopg()
        record_open_loop(self)
        if pool is not None:
            self._pool, self._owns_pool = pool, False
            return
        conninfo = self._settings.conninfo
        kwargs = self._settings.connection_kwargs()
        # One direct connection first: a dead server fails now, with the driver's
        # reason, instead of a bare PoolTimeout 30 s later.
        with errors.translated(self._settings.target):
            probe = await psycopg.AsyncConnection.connect(conninfo, **kwargs)
            await probe.close()
        factory = self.pool_factory or psycopg_pool.AsyncConnectionPool
        new_pool = factory(conninfo, kwargs=kwargs, open=False, **self._settings.pool_arguments)
        with errors.translated(self._settings.target):
            await new_pool.open(wait=False)
        self._pool, self._owns_pool = new_pool, True

    async def close_async(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._owns_pool:
            await pool.close()

    async def run_query_async(
        self, name: str, query_params: Params | None, connection: Any, fetch: Fetch
    ) -> Any:
        text = sql.query(name)
        with errors.translated(self._settings.target):
            if connection is not None:
                return await _execute_async(connection, text, query_params, fetch)
            async with self.pool.connection() as conn:
                return await _execute_async(conn, text, query_params, fetch)

    async def execute_script_async(self, script: str) -> None:
        with errors.translated(self._settings.target):
            async with self.pool.connection() as conn:
                await conn.execute(script)

    @contextlib.asynccontextmanager
    async def transaction_async(self) -> AsyncIterator[Any]:
        """A pooled connection inside one transaction (see BaseConnector.transaction)."""
        with errors.translated(self._settings.target):
            async with self.pool.connection() as conn, conn.transaction():
                yield conn

    async def listen_notify(
        self,
        channels: Iterable[str],
        on_notification: NotificationCallback,
        on_listening: ListeningCallback | None = None,
    ) -> None:
        """LISTEN on a dedicated connection (listen_dsn's when given) until cancelled.

        Behind a transaction pooler without listen_dsn it cannot LISTEN, and
        wakes the caller every POOLER_POLL_INTERVAL seconds instead (listener.poll_forever).
        """
        if not self._settings.can_listen:
            await poll_forever(channels, on_notification)
            return
        psycopg, _ = _import_psycopg()
        kwargs = {**self._settings.listener_kwargs(), "autocommit": True}
        kwargs.setdefault("connect_timeout", max(1, int(self.listen_keepalive)))

        async def connect() -> _PsycopgListenSession:
            conn = await psycopg.AsyncConnection.connect(self._settings.conninfo, **kwargs)
            return _PsycopgListenSession(conn)

        await listen_forever(
            connect, channels, on_notification, on_listening, self.listen_keepalive
        )


class _PsycopgListenSession:
    """A ListenSession on a psycopg 3 AsyncConnection (autocommit)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def listen(self, channel: str) -> None:
        from psycopg import sql as psql

        await self.conn.execute(psql.SQL("LISTEN {}").format(psql.Identifier(channel)))

    async def notifications(self, window: float) -> AsyncIterator[tuple[str, str]]:
        async for notify in self.conn.notifies(timeout=window):
            yield notify.channel, notify.payload

    async def ping(self) -> None:
        await self.conn.execute("SELECT 1")

    async def close(self) -> None:
        await self.conn.close()


class SyncPsycopgConnector(PooledConnector, BaseSyncConnector):
    """Sync connector on psycopg 3's ConnectionPool, for deferring jobs from sync code.

    Any argument of `psycopg_pool.ConnectionPool` passes through; libpq keywords
    may be given directly. It cannot run a worker.
    """

    def __init__(
        self,
        *,
        json_dumps: JsonDumps | None = None,
        json_loads: JsonLoads | None = None,
        pool_factory: Callable[..., Any] | None = None,
        **arguments: Any,
    ) -> None:
        super().__init__(json_dumps=json_dumps, json_loads=json_loads)
        arguments.pop("listen_keepalive", None)
        self._settings = _PsycopgSettings(type(self).__name__, arguments, listens=False)
        self.pool_factory = _check_pool_factory(type(self).__name__, pool_factory)
        self._pool: Any = None
        self._owns_pool = False

    def open(self, pool: Any = None) -> None:
        if self._pool is not None:
            return
        psycopg, psycopg_pool = _import_psycopg()
        if pool is not None:
            self._pool, self._owns_pool = pool, False
            return
        conninfo = self._settings.conninfo
        kwargs = self._settings.connection_kwargs()
        with errors.translated(self._settings.target):
            psycopg.Connection.connect(conninfo, **kwargs).close()
        factory = self.pool_factory or psycopg_pool.ConnectionPool
        new_pool = factory(conninfo, kwargs=kwargs, open=False, **self._settings.pool_arguments)
        with errors.translated(self._settings.target):
            new_pool.open(wait=False)
        self._pool, self._owns_pool = new_pool, True

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._owns_pool:
            pool.close()

    def run_query(
        self, name: str, query_params: Params | None, connection: Any, fetch: Fetch
    ) -> Any:
        text = sql.query(name)
        with errors.translated(self._settings.target):
            if connection is not None:
                return _execute_sync(connection, text, query_params, fetch)
            with self.pool.connection() as conn:
                return _execute_sync(conn, text, query_params, fetch)

    def execute_script(self, script: str) -> None:
        with errors.translated(self._settings.target):
            with self.pool.connection() as conn:
                conn.execute(script)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A pooled connection inside one transaction (see BaseConnector.transaction)."""
        with errors.translated(self._settings.target):
            with self.pool.connection() as conn, conn.transaction():
                yield conn


async def _execute_async(conn: Any, text: str, query_params: Params | None, fetch: str) -> Any:
    async with conn.cursor(row_factory=_dict_row()) as cursor:
        await cursor.execute(text, query_params or {})
        if fetch == "one":
            return await cursor.fetchone()
        if fetch == "all":
            return await cursor.fetchall()
        return None


def _execute_sync(conn: Any, text: str, query_params: Params | None, fetch: str) -> Any:
    with conn.cursor(row_factory=_dict_row()) as cursor:
        cursor.execute(text, query_params or {})
        if fetch == "one":
            return cursor.fetchone()
        if fetch == "all":
            return cursor.fetchall()
        return None
