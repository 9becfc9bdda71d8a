"""Connection settings of the psycopg2-based connectors (psycopg2, aiopg): a DSN plus libpq keywords.

psycopg2 and aiopg both take `dsn=` and libpq keywords as keyword arguments,
and fall back on the PG* environment variables for whatever is not given.
This class splits a connector's arguments into those and its pool arguments
(anything else is a TypeError naming it), adds the default application_name,
and describes the target for error messages without the password.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from procrastinate_core.connectors import errors, params

# The libpq environment variables that say where we connect, for messages only.
_ENVIRONMENT = {"host": "PGHOST", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER"}


def environment_params() -> dict[str, str]:
    """host/port/dbname/user from the PG* environment variables, as libpq would use them."""
    return {key: os.environ[var] for key, var in _ENVIRONMENT.items() if os.environ.get(var)}


class DsnSettings:
    """The parsed arguments of one connector: `dsn`, libpq keywords, pool arguments."""

    def __init__(self, connector: str, arguments: Mapping[str, Any], pool_arguments: Iterable[str]) -> None:
        self.original = dict(arguments)
        connection, others = params.split_arguments(connector, arguments, {"dsn", *pool_arguments})
        dsn = others.pop("dsn", None) or ""
        if not isinstance(dsn, str):
            raise TypeError(f"{connector}(dsn=...) must be a string, not {type(dsn).__name__}")
        self.dsn: str = dsn
        self.connection = connection
        self.pool_arguments = others

    def connect_kwargs(self, suffix: str = "") -> dict[str, Any]:
        """libpq keywords to pass beside the DSN, with our application_name unless one is set."""
        kwargs = dict(self.connection)
        if "application_name" in kwargs:
            if suffix:
                kwargs["application_name"] = f"{kwargs['application_name']}{suffix}"
        elif "application_name" in params.parse_dsn(self.dsn):
            if suffix:
                name = params.parse_dsn(self.dsn)["application_name"]
                kwargs["application_name"] = f"{name}{suffix}"
        else:
            kwargs["application_name"] = params.DEFAULT_APPLICATION_NAME + suffix
        return kwargs

    def target(self) -> str:
        """host/port/dbname we connect to (environment included), never the password."""
        found: dict[str, Any] = environment_params()
        found.update(params.parse_dsn(self.dsn))
        found.update({k: str(v) for k, v in self.connection.items()})
        return errors.describe_target(found)
