"""Psycopg2Connector: a sync connector on psycopg2's ThreadedConnectionPool.

For deferring jobs from sync code that already uses psycopg2 (a Django or
Flask view under a threaded server). Connection parameters come from `dsn=`,
libpq keywords given directly, or the PG* environment variables; `minconn`,
`maxconn` and `connection_factory` go to the pool. Threads that find every
connection busy wait for one instead of failing with psycopg2's "connection
pool exhausted".
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from procrastinate_core import exceptions, sql
from procrastinate_core.connectors import errors
from procrastinate_core.connectors.base import BaseSyncConnector, Fetch, Params, PooledConnector
from procrastinate_core.connectors.connection_settings import ConnectionSettings
from procrastinate_core.connectors.drivers import import_driver
from procrastinate_core.serialization import JsonDumps, JsonLoads

logger = logging.getLogger(__name__)

POOL_ARGUMENTS = ("minconn", "maxconn", "connection_factory")


def import_psycopg2(connector: str) -> Any:
    """psycopg2 with its pool and extras modules loaded, or MissingDriverError."""
    psycopg2 = import_driver("psycopg2", extra="psycopg2", connector=connector)
    import_driver("psycopg2.pool", extra="psycopg2", connector=connector)
    import_driver("psycopg2.extras", extra="psycopg2", connector=connector)
    return psycopg2


def run_on_psycopg2_connection(
    conn: Any, text: str, query_params: Params | None, fetch: str
) -> Any:
    """Run one query on a psycopg2 connection; rows as plain dicts."""
    import psycopg2.extras

    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
        cursor.execute(text, dict(query_params) if query_params else None)
        if fetch == "one":
            row = cursor.fetchone()
            return None if row is None else dict(row)
        if fetch == "all":
            return [dict(row) for row in cursor.fetchall()]
        return None


class Psycopg2Connector(PooledConnector, BaseSyncConnector):
    """Sync connector on `psycopg2.pool.ThreadedConnectionPool`; safe from many threads."""

    def __init__(
        self,
        *,
        json_dumps: JsonDumps | None = None,
        json_loads: JsonLoads | None = None,
        **arguments: Any,
    ) -> None:
        super().__init__(json_dumps=json_dumps, json_loads=json_loads)
        self._settings = ConnectionSettings(
            type(self).__name__, arguments, pool_arguments=POOL_ARGUMENTS
        )
        pool_arguments = self._settings.pool_arguments
        self.minconn: int = int(pool_arguments.get("minconn", 1))
        self.maxconn: int = int(pool_arguments.get("maxconn", 10))
        if not 0 <= self.minconn <= self.maxconn or self.maxconn < 1:
            raise exceptions.ConfigurationError(
                f"{type(self).__name__}(minconn={self.minconn}, maxconn={self.maxconn}): "
                "need 0 <= minconn <= maxconn and maxconn >= 1"
            )
        self._connection_factory = pool_arguments.get("connection_factory")
        self._pool: Any = None
        self._owns_pool = False
        self._slots: threading.BoundedSemaphore | None = None
        self._lock = threading.Lock()

    def open(self, pool: Any = None) -> None:
        """Create the pool (after one probe connection), or adopt a psycopg2 pool of yours."""
        with self._lock:
            if self._pool is not None:
                return
            psycopg2 = import_psycopg2(type(self).__name__)
            if pool is not None:
                self._slots = threading.BoundedSemaphore(
                    int(getattr(pool, "maxconn", self.maxconn))
                )
                self._pool, self._owns_pool = pool, False
                return
            kwargs = self._settings.connect_kwargs()
            if self._connection_factory is not None:
                kwargs["connection_factory"] = self._connection_factory
            target = self._settings.target()
            with errors.translated(target):
                psycopg2.connect(self._settings.dsn, **kwargs).close()
                new_pool = psycopg2.pool.ThreadedConnectionPool(
                    self.minconn, self.maxconn, self._settings.dsn, **kwargs
                )
            self._slots = threading.BoundedSemaphore(self.maxconn)
            self._pool, self._owns_pool = new_pool, True
            logger.debug(
                "Opened %s (%s)", type(self).__name__, target, extra={"action": "connector_open"}
            )

    def close(self) -> None:
        """Close our pool; a pool passed to open() stays open for its owner."""
        with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None and self._owns_pool:
                pool.closeall()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection in autocommit; a broken one is discarded, not returned."""
        pool, slots = self.pool, self._slots
        assert slots is not None
        slots.acquire()
        try:
            conn = pool.getconn()
            broken = True
            try:
                if conn.closed:
                    pool.putconn(conn, close=True)
                    conn = pool.getconn()
                if not conn.autocommit:
                    conn.autocommit = True
                yield conn
                broken = bool(conn.closed)
            except BaseException as exc:
                broken = bool(conn.closed) or (
                    isinstance(exc, Exception) and errors.is_connection_error(exc)
                )
                raise
            finally:
                try:
                    pool.putconn(conn, close=broken)
                except Exception:  # noqa: BLE001 - the pool was closed under us
                    logger.debug("Could not return a connection to a closed pool")
        finally:
            slots.release()

    def run_query(
        self, name: str, query_params: Params | None, connection: Any, fetch: Fetch
    ) -> Any:
        text = sql.query(name)
        with errors.translated(self._settings.target):
            if connection is not None:
                return run_on_psycopg2_connection(connection, text, query_params, fetch)
            with self._connection() as conn:
                return run_on_psycopg2_connection(conn, text, query_params, fetch)

    def execute_script(self, script: str) -> None:
        """Run a migration; sent as one simple query, so it is one transaction."""
        with errors.translated(self._settings.target):
            with self._connection() as conn:
                with conn.cursor() as cursor:
                    cursor.execute(script)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A pooled connection inside one transaction (see BaseConnector.transaction)."""
        with errors.translated(self._settings.target), self._connection() as conn:
            with conn.cursor() as cursor:
                cursor.execute("BEGIN")
            try:
                yield conn
            except BaseException:
                if not conn.closed:
                    with conn.cursor() as cursor:
                        cursor.execute("ROLLBACK")
                raise
            with conn.cursor() as cursor:
                cursor.execute("COMMIT")
