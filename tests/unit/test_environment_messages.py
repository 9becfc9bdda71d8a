"""Issue 14: an option value from the environment that its option refuses names the variable."""

from __future__ import annotations

from typing import Any

import pytest

from procrastinate_core.cli import main
from procrastinate_core.testing import InMemoryConnector
from tests.acceptance import cli_app


@pytest.fixture
def app() -> Any:
    return cli_app.app.with_connector(InMemoryConnector())


@pytest.mark.parametrize(
    ("variable", "value", "option"),
    [
        ("PROCRASTINATE_WORKER_CONCURRENCY", "0", "concurrency=0"),
        ("PROCRASTINATE_WORKER_QUEUES", "a\x01b", "queues="),
        ("PROCRASTINATE_WORKER_FETCH_JOB_POLLING_INTERVAL", "-1", "fetch_job_polling_interval="),
    ],
)
def test_refused_value_names_its_variable(
    app: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, option: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["worker", "--one-shot"], app=app) == 1
    err = capsys.readouterr().err
    assert f"environment variable {variable}=" in err and option in err
    assert f"Fix or unset {variable}" in err


def test_a_flag_that_overrides_the_variable_is_not_blamed_on_it(
    app: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROCRASTINATE_WORKER_CONCURRENCY", "2")
    assert main(["worker", "--one-shot", "--concurrency", "0"], app=app) == 1
    err = capsys.readouterr().err
    assert "concurrency=0" in err and "PROCRASTINATE_WORKER_CONCURRENCY" not in err
