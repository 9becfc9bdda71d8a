"""AiopgConnector: an async connector on an aiopg pool (psycopg2 underneath); it runs workers.

Connection parameters come from `dsn=`, libpq keywords given directly, or the
PG* environment variables; every other `aiopg.create_pool` argument
(`minsize`, `maxsize`, `timeout`, `pool_recycle`, `on_connect`, ...) passes
through. Its sync counterpart, used by sync `defer` before the app is opened
asynchronously, is a Psycopg2Connector with the same connection parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from procrastinate_core import sql
from procrastinate_core.connectors import errors
from procrastinate_core.connectors.base import (
    BaseAsyncConnector,
    BaseConnector,
    Fetch,
    ListeningCallback,
    NotificationCallback,
    Params,
    PooledConnector,
)
from procrastinate_core.connectors.connection_settings import ConnectionSettings
from procrastinate_core.connectors.drivers import import_driver
from procrastinate_core.connectors.listener import listen_forever, poll_forever
from procrastinate_core.connectors.sync_bridge import record_open_loop
from procrastinate_core.serialization import JsonDumps, JsonLoads

logger = logging.getLogger(__name__)

POOL_ARGUMENTS = (
    "minsize",
    "maxsize",
    "timeout",
    "pool_recycle",
    "enable_json",
    "enable_hstore",
    "enable_uuid",
    "echo",
    "on_connect",
)
# What aiopg.connect (the probe and the listener) accepts of those.
_CONNECT_ARGUMENTS = ("timeout", "enable_json", "enable_hstore", "enable_uuid", "echo")


def _import_aiopg() -> Any:
    aiopg = import_driver("aiopg", extra="aiopg", connector="AiopgConnector")
    import_driver("psycopg2.extras", extra="aiopg", connector="AiopgConnector")
    return aiopg


class AiopgConnector(PooledConnector, BaseAsyncConnector):
    """Async connector on `aiopg.create_pool`; can run workers, LISTEN/NOTIFY included."""

    def __init__(
        self,
        *,
        json_dumps: JsonDumps | None = None,
        json_loads: JsonLoads | None = None,
        listen_keepalive: float = 10.0,
        **arguments: Any,
    ) -> None:
        super().__init__(json_dumps=json_dumps, json_loads=json_loads)
        self._settings = ConnectionSettings(
            type(self).__name__, arguments, pool_arguments=POOL_ARGUMENTS, listens=True
        )
        self.listen_keepalive = listen_keepalive
        self._pool: Any = None
        self._owns_pool = False

    @property
    def wake_up_mode(self) -> str:
        """How a worker on this connector learns of new jobs (logged when it starts)."""
        return self._settings.wake_up_mode()

    def make_sync_counterpart(self) -> BaseConnector:
        """A Psycopg2Connector on the same server, same JSON hooks, same pool bounds."""
        from procrastinate_core.connectors.psycopg2 import Psycopg2Connector

        arguments: dict[str, Any] = dict(self._settings.connection)
        if self._settings.dsn:
            arguments["dsn"] = self._settings.dsn
        if self._settings.pooler is not None:
            arguments["pooler"] = self._settings.pooler
        pool_arguments = self._settings.pool_arguments
        if "maxsize" in pool_arguments:
            arguments["maxconn"] = max(1, int(pool_arguments["maxsize"]))
        if "minsize" in pool_arguments:
            arguments["minconn"] = min(int(pool_arguments["minsize"]), arguments.get("maxconn", 10))
        return Psycopg2Connector(
            json_dumps=self.json_dumps, json_loads=self.json_loads, **arguments
        )

    def _connect_arguments(self, listener: bool = False) -> dict[str, Any]:
        kwargs = self._settings.listener_kwargs() if listener else self._settings.connect_kwargs()
        for key in _CONNECT_ARGUMENTS:
            if key in self._settings.pool_arguments:
                kwargs[key] = self._settings.pool_arguments[key]
        return kwargs

    async def open_async(self, pool: Any = None) -> None:
        """Create the pool (after one probe connection), or adopt an aiopg pool of yours."""
        if self._pool is not None:
            return
        aiopg = _import_aiopg()
        record_open_loop(self)
        if pool is not None:
            self._pool, self._owns_pool = pool, False
            return
        target = self._settings.target()
        # One direct connection first: a dead server fails now with the driver's reason.
        with errors.translated(target):
            probe = await aiopg.connect(self._settings.dsn, **self._connect_arguments())
            await probe.close()
            kwargs = {**self._settings.connect_kwargs(), **self._settings.pool_arguments}
            new_pool = await aiopg.create_pool(self._settings.dsn, **kwargs)
        self._pool, self._owns_pool = new_pool, True
        logger.debug(
            "Opened %s (%s)", type(self).__name__, target, extra={"action": "connector_open"}
        )

    async def close_async(self) -> None:
        """Close our pool; a pool passed to open_async() stays open for its owner."""
        pool, self._pool = self._pool, None
        if pool is not None and self._owns_pool:
            pool.close()
            await pool.wait_closed()

    async def run_query_async(
        self, name: str, query_params: Params | None, connection: Any, fetch: Fetch
    ) -> Any:
        text = sql.query(name)
        with errors.translated(self._settings.target):
            if connection is not None:
                return await _execute(connection, text, query_params, fetch)
            async with self.pool.acquire() as conn:
                return await _execute(conn, text, query_params, fetch)

    async def execute_script_async(self, script: str) -> None:
        """Run a migration; sent as one simple query, so it is one transaction."""
        with errors.translated(self._settings.target):
            async with self.pool.acquire() as conn:
                async with conn.cursor() as cursor:
                    await cursor.execute(script)

    @contextlib.asynccontextmanager
    async def transaction_async(self) -> AsyncIterator[Any]:
        """A pooled connection inside one transaction (aiopg is autocommit: explicit BEGIN)."""
        with errors.translated(self._settings.target):
            async with self.pool.acquire() as conn:
                async with conn.cursor() as cursor:
                    await cursor.execute("BEGIN")
                try:
                    yield conn
                except BaseException:
                    if not conn.closed:
                        async with conn.cursor() as cursor:
                            await cursor.execute("ROLLBACK")
                    raise
                async with conn.cursor() as cursor:
                    await cursor.execute("COMMIT")

    async def listen_notify(
        self,
        channels: Iterable[str],
        on_notification: NotificationCallback,
        on_listening: ListeningCallback | None = None,
    ) -> None:
        """LISTEN on a dedicated connection until cancelled; reconnects with capped backoff.

        When nothing arrives for `listen_keepalive` seconds, a `SELECT 1` checks
        that the socket is alive, so a half-open connection is noticed. Behind a
        transaction pooler without listen_dsn it cannot LISTEN, and wakes the
        caller every POOLER_POLL_INTERVAL seconds instead (listener.poll_forever).
        """
        if not self._settings.can_listen:
            await poll_forever(channels, on_notification)
            return
        aiopg = _import_aiopg()
        kwargs = self._connect_arguments(listener=True)
        kwargs.setdefault("connect_timeout", max(1, int(self.listen_keepalive)))

        async def connect() -> _AiopgListenSession:
            return _AiopgListenSession(await aiopg.connect(self._settings.dsn, **kwargs))

        await listen_forever(
            connect, channels, on_notification, on_listening, self.listen_keepalive
        )


class _AiopgListenSession:
    """A ListenSession on an aiopg connection."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def listen(self, channel: str) -> None:
        from psycopg2.extensions import quote_ident

        async with self.conn.cursor() as cursor:
            await cursor.execute("LISTEN " + quote_ident(channel, self.conn.raw))

    async def notifications(self, window: float) -> AsyncIterator[tuple[str, str]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        while (remaining := deadline - loop.time()) > 0:
            try:
                notify = await asyncio.wait_for(self.conn.notifies.get(), timeout=remaining)
            except TimeoutError:
                return
            yield notify.channel, notify.payload

    async def ping(self) -> None:
        async with self.conn.cursor() as cursor:
            await cursor.execute("SELECT 1")

    async def close(self) -> None:
        await self.conn.close()


async def _execute(conn: Any, text: str, query_params: Params | None, fetch: str) -> Any:
    import psycopg2.extras

    async with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
        await cursor.execute(text, dict(query_params) if query_params else None)
        if fetch == "one":
            row = await cursor.fetchone()
            return None if row is None else dict(row)
        if fetch == "all":
            return [dict(row) for row in await cursor.fetchall()]
        return None
