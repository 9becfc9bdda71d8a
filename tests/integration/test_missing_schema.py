"""Issue 14: a database without our tables gives one clear error naming the fix, everywhere.

defer (every real connector and the Django one), worker start (async connectors),
the CLI's defer and shell; the Django admin and system check are in
tests/django/test_missing_schema.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.cli import main
from procrastinate_core.connectors import errors
from tests.acceptance import cli_app
from tests.integration.connector_cases import REAL, Case, url_of


@pytest.fixture(autouse=True)
def _forget_django_aliases() -> Any:
    from tests.django import contract as django_contract

    yield
    django_contract.forget_all()


def _assert_names_the_fix(error: BaseException) -> None:
    message = str(error)
    assert "pcq_jobs" in message or "pcq_workers" in message
    assert "manage.py migrate" in message and "schema --apply" in message


@pytest.fixture(params=REAL, ids=[case.name for case in REAL])
def empty_app(request: pytest.FixtureRequest, pg_server: Any, empty_db_name: str) -> pc.App:
    case: Case = request.param
    return pc.App(connector=case.build(url_of({**pg_server.params, "dbname": empty_db_name})))


def test_defer_without_schema_names_the_fix(empty_app: pc.App) -> None:
    with empty_app.open():
        with pytest.raises(exceptions.SchemaNotInstalled) as error:
            empty_app.configure_task("t").defer(x=1)
        _assert_names_the_fix(error.value)
        with pytest.raises(exceptions.SchemaNotInstalled):
            empty_app.job_manager.list_jobs()
        # The connector is still usable, and applying the schema fixes it.
        empty_app.schema_manager.apply_schema()
        assert empty_app.configure_task("t").defer(x=1) > 0


async def test_defer_async_and_worker_start_without_schema_name_the_fix(empty_app: pc.App) -> None:
    async with empty_app.open_async():
        with pytest.raises(exceptions.SchemaNotInstalled) as error:
            await empty_app.configure_task("t").defer_async(x=1)
        _assert_names_the_fix(error.value)
        if empty_app.connector.is_async:
            with pytest.raises(exceptions.SchemaNotInstalled) as error:
                await asyncio.wait_for(
                    empty_app.run_worker_async(wait=False, install_signal_handlers=False), 30
                )
            _assert_names_the_fix(error.value)


@pytest.fixture
def empty_cli_app(pg_server: Any, empty_db_name: str) -> Any:
    app = cli_app.app.with_connector(
        pc.PsycopgConnector(conninfo=pg_server.conninfo(empty_db_name), min_size=1, max_size=2)
    )
    with app.open():
        yield app


@pytest.mark.parametrize(
    "argv",
    [
        ["defer", "tests.acceptance.cli_app.add", '{"a": 1, "b": 2}'],
        ["shell", "list_jobs"],
        ["worker", "--one-shot"],
    ],
    ids=["defer", "shell", "worker"],
)
def test_cli_without_schema_names_the_fix(empty_cli_app: Any, capsys: Any, argv: list[str]) -> None:
    code = main(argv, app=empty_cli_app)
    captured = capsys.readouterr()
    said = captured.err + captured.out  # the shell answers on its output, like its other errors
    assert code != 0
    assert "manage.py migrate" in said and "schema --apply" in said, said


def test_only_our_tables_are_translated() -> None:
    class Undefined(Exception):
        sqlstate = errors.UNDEFINED_TABLE

    ours = errors.translate(Undefined('relation "pcq_jobs" does not exist'))
    assert isinstance(ours, exceptions.SchemaNotInstalled)
    other = errors.translate(Undefined('relation "shop_order" does not exist'))
    assert type(other) is exceptions.ConnectorException
