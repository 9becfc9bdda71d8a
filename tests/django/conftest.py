"""pytest-django for the tests of this folder only: the settings module is chosen here.

Setting DJANGO_SETTINGS_MODULE in this conftest (not in pyproject) keeps the
rest of the suite Django-free when run alone; when run together, Django is
configured but unused by the other tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import django
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.settings")
django.setup()


def pytest_configure(config: pytest.Config) -> None:
    from tests.django import contract

    contract.PYTEST_CONFIG = config


#: Every table of the queue but pcq_migrations: the catalog's list, so tables that later
#: migrations add (pcq_paused, pcq_outcome_stats...) are emptied too.
QUEUE_TABLES_SQL = (
    "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables "
    "WHERE schemaname = current_schema() AND tablename LIKE 'pcq\\_%' AND tablename <> "
    "'pcq_migrations'"
)


@pytest.fixture
def live_db(transactional_db: Any) -> Iterator[None]:
    """Committed data (transactional test); the queue tables are emptied afterwards.

    Django's flush skips unmanaged models, so pcq_* rows would otherwise leak
    from one transactional test into the next.
    """
    yield
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(QUEUE_TABLES_SQL)
        (tables,) = cursor.fetchone()
        cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


@pytest.fixture
def pcq_app() -> Any:
    from procrastinate_django import app

    return app


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's test database, dropped even if a worker thread left a session open."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
