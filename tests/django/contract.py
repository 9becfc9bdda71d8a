"""The Django connector as a case of the connector contract suite
(tests/integration/connector_cases.py).

`build(dsn)` registers a Django database alias for the contract test's
database (configuring Django with tests/django/settings.py if nothing did yet)
and returns a DjangoConnector on it; `transaction(dsn, commit)` yields that
alias's Django connection inside `transaction.atomic()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from typing import Any

from procrastinate_core.connectors.params import parse_dsn


def _ensure_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.settings")
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()


#: Bumped by forget_all: the next test's alias is a new one even on the same database
#: (the tests share one per process), so a connection an executor thread kept under an
#: old alias is never used again.
_generation = 0


def _alias_name(dsn: str) -> str:
    return f"contract_{_generation}_" + hashlib.sha1(dsn.encode()).hexdigest()[:12]


def alias_for(dsn: str) -> str:
    """A Django alias for this database, registered on first use."""
    _ensure_django()
    from django.db import connections

    alias = _alias_name(dsn)
    if alias not in connections.settings:
        params = parse_dsn(dsn)
        entry = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": params.pop("dbname", ""),
            "USER": params.pop("user", ""),
            "PASSWORD": params.pop("password", ""),
            "HOST": params.pop("host", ""),
            "PORT": params.pop("port", ""),
            "OPTIONS": params,
        }
        connections.settings[alias] = connections.configure_settings({"default": entry})["default"]
    return alias


#: Set by tests/django/conftest.py's pytest_configure: pytest-django blocks database
#: access outside Django tests, and the contract tests are not Django tests.
PYTEST_CONFIG: Any = None


def unblocked() -> contextlib.AbstractContextManager[Any]:
    if PYTEST_CONFIG is None:
        return contextlib.nullcontext()
    from pytest_django.plugin import blocking_manager_key

    blocker = PYTEST_CONFIG.stash.get(blocking_manager_key, None)
    return blocker.unblock() if blocker is not None else contextlib.nullcontext()


def build(dsn: str, **hooks: Any) -> Any:
    from procrastinate_django.connector import DjangoConnector

    class ContractDjangoConnector(DjangoConnector):
        """A DjangoConnector allowed to reach the database outside pytest-django tests."""

        def run_query(self, *args: Any) -> Any:
            with unblocked():
                return super().run_query(*args)

        def _check_reachable(self) -> None:
            with unblocked():
                super()._check_reachable()

        def execute_script(self, script: str) -> None:
            with unblocked():
                super().execute_script(script)

        @contextlib.contextmanager
        def transaction(self) -> Iterator[Any]:
            with unblocked(), super().transaction() as connection:
                yield connection

    return ContractDjangoConnector(alias_for(dsn), **hooks)


@contextlib.contextmanager
def transaction(dsn: str, commit: bool) -> Iterator[Any]:
    from django.db import connections
    from django.db import transaction as django_transaction

    alias = alias_for(dsn)
    with unblocked(), django_transaction.atomic(using=alias):
        yield connections[alias]
        if not commit:
            django_transaction.set_rollback(True, using=alias)


def forget_all() -> None:
    """Close and unregister every alias the contract tests registered.

    Each test's database is emptied after it, terminating the alias's connection;
    a leftover alias would be touched by later Django tests (override_settings(
    TIME_ZONE=...) reconfigures every open connection) and fail with AdminShutdown.
    """
    from django.apps import apps

    global _generation
    _generation += 1
    if not apps.ready:
        return
    from django.db import connections

    for alias in [name for name in connections.settings if name.startswith("contract_")]:
        with unblocked(), contextlib.suppress(Exception):  # its database may be gone already
            connections[alias].close()
        del connections[alias]
        del connections.settings[alias]
