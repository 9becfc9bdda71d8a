"""Issue 14: the CLI and the shell refuse bad names before any query (validation.py's messages)."""

from __future__ import annotations

from typing import Any

import pytest

from procrastinate_core.cli import main
from procrastinate_core.testing import InMemoryConnector
from tests.acceptance import cli_app

ADD = "tests.acceptance.cli_app.add"


@pytest.fixture
def connector() -> InMemoryConnector:
    return InMemoryConnector()


@pytest.fixture
def app(connector: InMemoryConnector) -> Any:
    return cli_app.app.with_connector(connector)


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--queue", "a\x01b"], "queue="),
        (["--queue", "q" * 51], "queue="),
        (["--lock", "l" * 1025], "lock="),
        (["--queueing-lock", "a\x00"], "queueing_lock="),
    ],
)
def test_defer_refuses_bad_names(
    app: Any, connector: InMemoryConnector, capsys: Any, flags: list[str], field: str
) -> None:
    assert main(["defer", *flags, ADD, '{"a": 1, "b": 2}'], app=app) == 1
    err = capsys.readouterr().err
    assert field in err and "bytes" in err
    assert connector.jobs == {}


def test_worker_refuses_bad_queue_names(
    app: Any, connector: InMemoryConnector, capsys: Any
) -> None:
    assert main(["worker", "--one-shot", "--queues", "ok," + "q" * 60], app=app) != 0
    assert "queues=" in capsys.readouterr().err
    assert connector.workers == {}


def test_shell_refuses_bad_filters(app: Any, capsys: Any) -> None:
    assert main(["shell", "list_jobs", "--queue", "a\x00"], app=app) == 1
    captured = capsys.readouterr()
    assert "queue=" in captured.out + captured.err
