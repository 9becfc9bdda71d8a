"""Applying the core schema from Django's `migrate`, through Django's own connection.

Migration 0001 of this app calls `apply_schema` (RunPython); a post_migrate
handler calls it again so that migrations added to the core later are applied
by `migrate` without a new Django migration file. Going backwards is a
no-op: unapplying this app's migrations leaves the queue tables in place
(drop them by hand if you mean to lose every job).
"""

from __future__ import annotations

import logging
from typing import Any

from procrastinate_core.schema import SchemaManager
from procrastinate_django.connector import DjangoConnector

logger = logging.getLogger(__name__)


def apply_schema(alias: str, *, only_if_installed: bool = False) -> list[int]:
    """Apply the missing core migrations on DATABASES[alias]; the versions applied."""
    from django.db import connections

    if connections[alias].vendor != "postgresql":
        return []
    manager = SchemaManager(DjangoConnector(alias))
    if only_if_installed and not manager.get_status().applied:
        return []
    return manager.apply_schema()


def forwards(apps: Any, schema_editor: Any) -> None:
    """RunPython forwards: the queue schema on the database being migrated."""
    from procrastinate_django.settings import settings

    alias = schema_editor.connection.alias
    if alias == settings.DATABASE_ALIAS:
        apply_schema(alias)


def backwards(apps: Any, schema_editor: Any) -> None:
    """RunPython backwards: deliberately nothing (see the module docstring)."""
