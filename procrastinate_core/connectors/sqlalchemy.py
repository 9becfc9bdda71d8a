"""SQLAlchemyPsycopg2Connector: a sync connector on a SQLAlchemy engine (psycopg2 driver).

Either it builds its own engine from `dsn=` (a `postgresql+psycopg2://` URL
or a plain `postgresql://` one) plus any `create_engine` argument, or the
application hands its engine over with `app.open(engine)`, and the jobs are
written through that engine's pool: no second pool, no extra connections.
libpq keywords given at the top level go to the driver (`connect_args`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from procrastinate_core import exceptions, sql
from procrastinate_core.connectors import errors, params
from procrastinate_core.connectors.base import BaseSyncConnector, Fetch, Params
from procrastinate_core.connectors.connection_settings import ConnectionSettings, environment_params
from procrastinate_core.connectors.drivers import import_driver
from procrastinate_core.serialization import JsonDumps, JsonLoads

logger = logging.getLogger(__name__)

_EXTRA = "sqlalchemy"


def _import_sqlalchemy() -> Any:
    import_driver("psycopg2", extra=_EXTRA, connector="SQLAlchemyPsycopg2Connector")
    return import_driver("sqlalchemy", extra=_EXTRA, connector="SQLAlchemyPsycopg2Connector")


def _engine_url(dsn: str) -> tuple[str, dict[str, str]]:
    """The engine URL for `dsn`, and the libpq keywords of a conninfo string
    (`host=... dbname=...`)."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg2://" + dsn[len(prefix) :], {}
    if dsn.startswith("postgresql+psycopg2://"):
        return dsn, {}
    if "://" not in dsn:
        return "postgresql+psycopg2://", params.parse_dsn(dsn)
    raise exceptions.ConfigurationError(
        f"SQLAlchemyPsycopg2Connector(dsn=...) expects a postgresql:// or "
        f"postgresql+psycopg2:// URL (or a libpq conninfo string), got "
        f"{dsn.split('://')[0]!r}://...; for another driver, use the matching connector "
        "(PsycopgConnector for psycopg 3)."
    )


class SQLAlchemyPsycopg2Connector(BaseSyncConnector):
    """Sync connector writing through a SQLAlchemy 2 engine; share yours with `app.open(engine)`."""

    def __init__(
        self,
        *,
        json_dumps: JsonDumps | None = None,
        json_loads: JsonLoads | None = None,
        dsn: str = "postgresql://",
        **arguments: Any,
    ) -> None:
        super().__init__(json_dumps=json_dumps, json_loads=json_loads)
        # Every argument that is not a libpq keyword (nor `pooler`) is a create_engine
        # argument, checked by building an engine below.
        self._settings = ConnectionSettings(
            type(self).__name__, {"dsn": dsn, **arguments}, pool_arguments=None
        )
        self.dsn = dsn
        self._url, conninfo = _engine_url(dsn)
        self._connect_args = {**conninfo, **self._settings.connection}
        self._engine_arguments = dict(self._settings.pool_arguments)
        connect_args = dict(self._engine_arguments.pop("connect_args", None) or {})
        connect_args.update(self._connect_args)
        if "application_name" not in connect_args and "application_name" not in params.parse_dsn(
            dsn
        ):
            connect_args["application_name"] = params.DEFAULT_APPLICATION_NAME
        self._engine_arguments["connect_args"] = connect_args
        self._check_engine_arguments()
        self._engine: Any = None
        self._owns_engine = False
        self._lock = threading.Lock()

    def _check_engine_arguments(self) -> None:
        """Build (without connecting) an engine now, so a bad argument fails at construction."""
        sqlalchemy = _import_sqlalchemy()
        try:
            engine = sqlalchemy.create_engine(self._url, **self._engine_arguments)
        except (TypeError, sqlalchemy.exc.ArgumentError) as exc:
            raise TypeError(
                f"SQLAlchemyPsycopg2Connector() got an argument that is neither a libpq "
                f"connection parameter nor accepted by sqlalchemy.create_engine: {exc}"
            ) from exc
        engine.dispose()

    @property
    def is_open(self) -> bool:
        return self._engine is not None

    @property
    def engine(self) -> Any:
        if self._engine is None:
            raise exceptions.AppNotOpen(
                f"{type(self).__name__} is not open: use `with app.open():` (or "
                "`app.open(engine)` to share your SQLAlchemy engine) before deferring."
            )
        return self._engine

    def _target(self, engine: Any = None) -> str:
        """host/port/dbname the engine connects to (environment included), never the password."""
        engine = engine if engine is not None else self._engine
        if engine is None or self._owns_engine or engine is not self._engine:
            return self._settings.target()
        # An engine handed over by the application: its URL says where it goes.
        found: dict[str, Any] = environment_params()
        url = engine.url
        from_url = {
            "host": url.host,
            "port": url.port,
            "dbname": url.database,
            "user": url.username,
        }
        found.update({k: v for k, v in from_url.items() if v})
        return errors.describe_target(found)

    def open(self, pool: Any = None) -> None:
        """Create our engine (after one probe connection), or adopt the engine given."""
        with self._lock:
            if self._engine is not None:
                return
            sqlalchemy = _import_sqlalchemy()
            if pool is not None:
                if not isinstance(pool, sqlalchemy.engine.Engine):
                    raise exceptions.ConfigurationError(
                        f"{type(self).__name__}.open() expects a sqlalchemy Engine, got "
                        f"{type(pool).__name__}"
                    )
                if pool.dialect.driver != "psycopg2":
                    raise exceptions.ConfigurationError(
                        f"{type(self).__name__} needs an engine using the psycopg2 driver; "
                        f"this one uses {pool.dialect.driver!r} (URL postgresql+psycopg2://...)"
                    )
                self._engine, self._owns_engine = pool, False
                return
            engine = sqlalchemy.create_engine(self._url, **self._engine_arguments)
            with errors.translated(self._target(engine)):
                try:
                    engine.connect().close()
                except BaseException:
                    engine.dispose()
                    raise
            self._engine, self._owns_engine = engine, True
            logger.debug(
                "Opened %s (%s)",
                type(self).__name__,
                self._target(),
                extra={"action": "connector_open"},
            )

    def close(self) -> None:
        """Dispose of our engine; an engine passed to open() stays its owner's."""
        with self._lock:
            engine, self._engine = self._engine, None
            if engine is not None and self._owns_engine:
                engine.dispose()

    def run_query(
        self, name: str, query_params: Params | None, connection: Any, fetch: Fetch
    ) -> Any:
        text = sql.query(name)
        if connection is not None:
            with errors.translated(self._target):
                return _execute(connection, text, query_params, fetch)
        engine = self.engine
        with errors.translated(self._target):
            with engine.begin() as conn:
                return _execute(conn, text, query_params, fetch)

    def execute_script(self, script: str) -> None:
        """Run a migration in one transaction (no parameters: '%' stays literal)."""
        engine = self.engine
        with errors.translated(self._target):
            with engine.begin() as conn:
                conn.exec_driver_sql(script)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """An engine connection inside one transaction (see BaseConnector.transaction)."""
        engine = self.engine
        with errors.translated(self._target), engine.begin() as conn:
            yield conn


def _execute(conn: Any, text: str, query_params: Params | None, fetch: str) -> Any:
    """Run on a SQLAlchemy Connection (the caller's transaction, or ours), or a raw psycopg2 one."""
    if not hasattr(conn, "exec_driver_sql"):
        from procrastinate_core.connectors.psycopg2 import run_on_psycopg2_connection

        return run_on_psycopg2_connection(conn, text, query_params, fetch)
    result = conn.exec_driver_sql(text, dict(query_params) if query_params else None)
    if fetch == "one":
        row = result.mappings().first()
        return None if row is None else dict(row)
    if fetch == "all":
        return [dict(row) for row in result.mappings().all()]
    return None
