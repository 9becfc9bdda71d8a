"""Applying, reading and checking the database schema (numbered migrations).

The migrations in sql/migrations are the schema: a new database gets all of
them, an older one only those it lacks. Each runs in one transaction and
records itself in pcq_migrations, so concurrent appliers (two workers starting
together) cannot half-apply one: the loser's migration fails, and we then see
it recorded and move on.
"""

from __future__ import annotations

import dataclasses
import logging

from procrastinate_core import exceptions, sql
from procrastinate_core.connectors.base import BaseConnector
from procrastinate_core.plans import HasConnector, Op, Plan, Script, paired

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SchemaStatus:
    """Where the database stands against the code's migrations."""

    applied: tuple[int, ...]
    expected: tuple[int, ...]

    @property
    def missing(self) -> tuple[int, ...]:
        return tuple(v for v in self.expected if v not in self.applied)

    @property
    def is_current(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        if self.is_current:
            return f"schema is current (version {max(self.expected)})"
        if not self.applied:
            return (
                "schema is not installed; apply it with `schema --apply` "
                "(or `manage.py migrate` with Django)"
            )
        return (
            f"schema is at version {max(self.applied)}, the code expects "
            f"{max(self.expected)}; missing migrations {list(self.missing)}: "
            "apply them with `schema --apply` (or `manage.py migrate`)"
        )


def read_schema() -> str:
    """The full schema as SQL: every migration, in order."""
    return "\n".join(m.sql for m in sql.migrations())


class SchemaManager(HasConnector):
    """apply_schema / get_status (and _async): the schema on the app's database."""

    def __init__(self, connector: BaseConnector) -> None:
        self.connector = connector

    @staticmethod
    def get_schema() -> str:
        return read_schema()

    def _applied(self) -> Plan[tuple[int, ...]]:
        installed = yield Op("schema_is_installed", {}, "one", lambda r: bool(r["installed"]))
        if not installed:
            return ()
        rows = yield Op("schema_versions_applied", {}, "all")
        return tuple(row["version"] for row in rows)

    def _get_status(self) -> Plan[SchemaStatus]:
        """Which migrations the database has and which the code expects."""
        applied = yield from self._applied()
        return SchemaStatus(applied, tuple(m.version for m in sql.migrations()))

    get_status, get_status_async = paired(_get_status)

    def _apply_schema(self) -> Plan[list[int]]:
        """Apply the missing migrations; the versions applied by this call."""
        done: list[int] = []
        applied = yield from self._applied()
        for migration in sql.migrations():
            if migration.version in applied:
                continue
            try:
                # Appliers take turns (migration_lock.sql), so the check below
                # sees a concurrent applier's migration once it has committed.
                yield Script(sql.migration_lock() + migration.sql)
            except exceptions.ConnectorException as exc:
                applied = yield from self._applied()
                if migration.version in applied:
                    continue  # someone else applied it meanwhile
                raise exceptions.SchemaError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
            logger.info(
                "Applied migration %04d_%s",
                migration.version,
                migration.name,
                extra={"action": "apply_migration", "version": migration.version},
            )
            done.append(migration.version)
        return done

    apply_schema, apply_schema_async = paired(_apply_schema)

    def _check(self) -> Plan[SchemaStatus]:
        """The status; raises SchemaError (saying what to run) if it is not current."""
        status = yield from self._get_status()
        if not status.is_current:
            raise exceptions.SchemaError(status.describe())
        return status

    check, check_async = paired(_check)
