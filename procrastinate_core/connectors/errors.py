"""Translating driver exceptions into ours, once for every connector.

Drivers differ in how they expose the SQLSTATE (psycopg 3: `sqlstate`,
psycopg2/aiopg: `pgcode`) and wrap each other (SQLAlchemy's `.orig`, Django's
`__cause__`); this module walks through all of that so that users only ever
see procrastinate_core.exceptions.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from procrastinate_core import exceptions

UNIQUE_VIOLATION = "23505"
UNDEFINED_TABLE = "42P01"
UNDEFINED_FUNCTION = "42883"
#: What the missing-schema error tells users to run.
SCHEMA_FIX = (
    "Apply the schema: `python manage.py migrate` with Django, otherwise "
    "`procrastinate-core --app=<your app> schema --apply` (or app.schema_manager.apply_schema())."
)
# Class 08: connection exceptions; 57P01-57P03: admin shutdown, crash, cannot connect now.
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__


def sqlstate_of(exc: BaseException) -> str | None:
    for item in _chain(exc):
        state = getattr(item, "sqlstate", None) or getattr(item, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def constraint_of(exc: BaseException) -> str | None:
    for item in _chain(exc):
        diag = getattr(item, "diag", None)
        name = getattr(diag, "constraint_name", None)
        if name:
            return str(name)
    return None


def is_connection_error(exc: BaseException) -> bool:
    state = sqlstate_of(exc)
    if state is not None:
        return state.startswith(_CONNECTION_STATES[0]) or state in _CONNECTION_STATES[1:]
    names = {type(item).__name__ for item in _chain(exc)}
    return bool(
        names
        & {"OperationalError", "InterfaceError", "PoolTimeout", "PoolClosed", "ConnectionError"}
    )


def describe_target(params: Mapping[str, Any]) -> str:
    """host/port/dbname of connection parameters, for messages; never the password."""
    parts = []
    for key in ("host", "port", "dbname", "user"):
        value = params.get(key)
        if value not in (None, ""):
            parts.append(f"{key}={value}")
    return " ".join(parts) or "the libpq defaults (PGHOST, PGPORT, ... or the local socket)"


#: Our tables are named pcq_*; the name is quoted in the server's message whatever its language.
_OUR_TABLE = re.compile(r'"(pcq_\w+)"')
#: "function pcq_defer_jobs(jsonb) does not exist": a query calling one of our
#: functions on a database whose schema is missing or older than the code.
_OUR_FUNCTION = re.compile(r"function (pcq_\w+)\(")


def translate(
    exc: BaseException, *, target: str | None = None
) -> exceptions.ConnectorException | exceptions.SchemaNotInstalled:
    """Our exception for a driver exception (the driver's stays as __cause__)."""
    if isinstance(exc, exceptions.ConnectorException):
        return exc
    state = sqlstate_of(exc)
    if state == UNIQUE_VIOLATION:
        constraint = constraint_of(exc)
        return exceptions.UniqueViolation(str(exc).strip(), constraint_name=constraint)
    if state == UNDEFINED_TABLE and _OUR_TABLE.search(str(exc)):
        found = _OUR_TABLE.search(str(exc))
        table = found.group(1) if found else "pcq_jobs"
        return exceptions.SchemaNotInstalled(
            f"the table {table} does not exist in this "
            f"database{' (' + target + ')' if target else ''}: "
            f"the queue's schema was never applied to it. {SCHEMA_FIX}"
        )
    found_function = _OUR_FUNCTION.search(str(exc)) if state == UNDEFINED_FUNCTION else None
    if found_function:
        return exceptions.SchemaNotInstalled(
            f"the function {found_function.group(1)} does not exist in this "
            f"database{' (' + target + ')' if target else ''}: the queue's schema (pcq_jobs and "
            f"its functions) was never "
            f"applied to it, or is older than this code. {SCHEMA_FIX}"
        )
    if is_connection_error(exc):
        where = f" ({target})" if target else ""
        return exceptions.DatabaseConnectionError(
            f"cannot talk to PostgreSQL{where}: {str(exc).strip() or type(exc).__name__}"
        )
    return exceptions.ConnectorException(f"{type(exc).__name__}: {str(exc).strip()}")


@contextlib.contextmanager
def translated(target: str | Callable[[], str] | None = None) -> Iterator[None]:
    """Re-raise driver exceptions as ours; works around `await` too.

    `target` may be a callable: describing the target parses the DSN, which is
    worth doing only when an error is raised, not on every query.
    """
    try:
        yield
    except exceptions.ProcrastinateException:
        raise
    except Exception as exc:
        raise translate(exc, target=target() if callable(target) else target) from exc
