"""ConnectionSettings: the parsed connection arguments of any connector, one class for all five.

Every connector takes its parameters the same three ways (a DSN, libpq
keywords at the top level, the PG* environment) plus its pool's arguments and
two of ours: `pooler=` (what sits between us and PostgreSQL: None, "session"
or "transaction", see docs/pgbouncer.md) and, for the async connectors,
`listen_dsn=` (where the listener connects, when the DSN points at a
transaction pooler through which LISTEN cannot work). Keeping the parsing in
one place is what keeps the connectors agreeing on the default
application_name, the listener's `-listener` suffix and the target named in
error messages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from procrastinate_core import exceptions
from procrastinate_core.connectors import errors, params
from procrastinate_core.connectors.listener import POOLER_POLL_INTERVAL

Pooler = Literal["session", "transaction"]
POOLERS: tuple[str, ...] = ("session", "transaction")
LISTENER_SUFFIX = "-listener"

# The libpq environment variables that say where we connect, for messages only.
_ENVIRONMENT = {"host": "PGHOST", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER"}


def environment_params() -> dict[str, str]:
    """host/port/dbname/user from the PG* environment variables, as libpq would use them."""
    return {key: os.environ[var] for key, var in _ENVIRONMENT.items() if os.environ.get(var)}


def check_pooler(connector: str, pooler: Any) -> Pooler | None:
    """`pooler` validated: None, "session" or "transaction"; anything else names the fix."""
    if pooler is None or pooler in POOLERS:
        return pooler  # type: ignore[no-any-return]
    raise exceptions.ConfigurationError(
        f"{connector}(pooler={pooler!r}): expected None (direct connection), 'session' or "
        "'transaction' (the pool_mode of the PgBouncer the DSN points at); see docs/pgbouncer.md."
    )


class ConnectionSettings:
    """The arguments of one connector, split into DSN, libpq keywords, pool arguments and ours.

    - `dsn_name`: what the connector calls its DSN (`conninfo` for psycopg 3, `dsn` elsewhere);
    - `pool_arguments`: the names its pool accepts, or None when every other
      argument goes to the pool (SQLAlchemy's create_engine checks them itself);
    - `driver_options`: for psycopg 3, the non-libpq keys accepted in `kwargs={...}`
      (None: the connector has no `kwargs=` argument);
    - `listens`: whether `listen_dsn=` is accepted (async connectors only).
    """

    def __init__(
        self,
        connector: str,
        arguments: Mapping[str, Any],
        *,
        dsn_name: str = "dsn",
        pool_arguments: Iterable[str] | None = (),
        driver_options: Iterable[str] | None = None,
        listens: bool = False,
    ) -> None:
        self.connector = connector
        self.original = dict(arguments)
        arguments = dict(arguments)
        self.pooler: Pooler | None = check_pooler(connector, arguments.pop("pooler", None))
        listen_dsn = arguments.pop("listen_dsn", None) if listens else None
        if listen_dsn is not None and not isinstance(listen_dsn, str):
            raise TypeError(
                f"{connector}(listen_dsn=...) must be a string, not {type(listen_dsn).__name__}"
            )
        self.listen_dsn: str | None = listen_dsn or None
        ours = {dsn_name} | ({"kwargs"} if driver_options is not None else set())
        if pool_arguments is None:
            connection = {k: v for k, v in arguments.items() if k in params.LIBPQ_KEYWORDS}
            others = {k: v for k, v in arguments.items() if k not in params.LIBPQ_KEYWORDS}
        else:
            accepted = {*ours, *pool_arguments, "pooler", *(("listen_dsn",) if listens else ())}
            connection, others = params.split_arguments(connector, arguments, accepted)
        dsn = others.pop(dsn_name, None) or ""
        if not isinstance(dsn, str):
            raise TypeError(
                f"{connector}({dsn_name}=...) must be a string, not {type(dsn).__name__}"
            )
        self.dsn: str = dsn
        #: Non-libpq connection options of the driver (psycopg 3's prepare_threshold...).
        self.driver_options: dict[str, Any] = {}
        if driver_options is not None:
            nested = dict(others.pop("kwargs", None) or {})
            allowed = set(driver_options)
            unknown = set(nested) - params.LIBPQ_KEYWORDS - allowed
            if unknown:
                raise TypeError(
                    f"{connector}(kwargs=...) got unknown connection argument(s) "
                    f"{', '.join(sorted(map(repr, unknown)))}; use libpq keywords such as "
                    "host, port, dbname, user, password."
                )
            self.driver_options = {k: v for k, v in nested.items() if k in allowed}
            connection = {**{k: v for k, v in nested.items() if k not in allowed}, **connection}
        #: libpq keywords given as arguments (they override the same keyword of the DSN).
        self.connection: dict[str, Any] = connection
        self.pool_arguments: dict[str, Any] = others

    # -- what to connect with ----------------------------------------------------
    def connect_kwargs(self, suffix: str = "") -> dict[str, Any]:
        """libpq keywords to pass beside the DSN, with our application_name unless one is set.

        `suffix` ("-listener") is appended to the application_name in force,
        wherever it was set (argument, DSN, or our default).
        """
        kwargs = dict(self.connection)
        name = kwargs.get("application_name") or params.parse_dsn(self.dsn).get("application_name")
        if name is None:
            kwargs["application_name"] = params.DEFAULT_APPLICATION_NAME + suffix
        elif suffix:
            kwargs["application_name"] = f"{name}{suffix}"
        return kwargs

    def listener_kwargs(self) -> dict[str, Any]:
        """libpq keywords for the listener: connect_kwargs("-listener") with listen_dsn's on top.

        listen_dsn states only what differs (usually host and port: the server
        itself instead of the pooler); the rest comes from the main parameters.
        """
        kwargs = self.connect_kwargs(LISTENER_SUFFIX)
        own = params.parse_dsn(self.listen_dsn or "")
        if "application_name" in own:
            own["application_name"] += LISTENER_SUFFIX
        kwargs.update(own)
        return kwargs

    @property
    def can_listen(self) -> bool:
        """False behind a transaction pooler without listen_dsn: LISTEN would hear nothing there."""
        return self.pooler != "transaction" or self.listen_dsn is not None

    def wake_up_mode(self) -> str:
        """How a worker on this connector learns of new jobs, in words, for its start log line."""
        if self.listen_dsn is not None:
            return f"LISTEN on a direct connection ({self.listener_target()})"
        if self.pooler == "transaction":
            return (
                f"polling every {POOLER_POLL_INTERVAL:g} s (transaction pooler and no "
                "listen_dsn: LISTEN cannot work through it)"
            )
        if self.pooler == "session":
            return "LISTEN through the session pooler"
        return "LISTEN"

    # -- what to say in messages -------------------------------------------------
    def target(self) -> str:
        """host/port/dbname/user we connect to (environment included), never the password."""
        found: dict[str, Any] = environment_params()
        found.update(params.parse_dsn(self.dsn))
        found.update({k: str(v) for k, v in self.connection.items()})
        return errors.describe_target(found)

    def listener_target(self) -> str:
        """The same for the listener's connection."""
        found: dict[str, Any] = environment_params()
        found.update(params.parse_dsn(self.dsn))
        found.update({k: str(v) for k, v in self.listener_kwargs().items()})
        return errors.describe_target(found)

    def counterpart_arguments(self) -> dict[str, Any]:
        """The original arguments minus what only an async connector takes (listen_dsn)."""
        return {k: v for k, v in self.original.items() if k != "listen_dsn"}
