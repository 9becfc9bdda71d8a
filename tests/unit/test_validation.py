"""Issue 14: one validation place for names and options (procrastinate_core/validation.py)."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions, validation
from procrastinate_core.options import WorkerOptions
from procrastinate_core.testing import InMemoryConnector

DOCS = pathlib.Path(__file__).parents[2] / "docs" / "tasks.md"


def _app(**kwargs: Any) -> pc.App:
    return pc.App(connector=InMemoryConnector(), **kwargs)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a\x00b", "control character '\\x00'"),
        ("a\ud800", "lone surrogate"),
        ("a\x85", "control character"),
        ("q" * 51, "51 bytes long"),
        ("é" * 26, "52 bytes long"),
        ("", "empty"),
    ],
)
def test_queue_names_are_refused_with_field_value_limit_and_fix(value: str, problem: str) -> None:
    with pytest.raises(exceptions.ConfigurationError) as error:
        validation.check_name("queue", value)
    message = str(error.value)
    assert message.startswith("queue=") and problem in message
    assert "50 bytes" in message and "notification channels" in message


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(exceptions.ConfigurationError) as error:
        validation.check_name("lock", "x" * 10_000)
    assert len(str(error.value)) < 500 and "10000 characters" in str(error.value)
    assert "hashlib.sha256" in str(error.value)


def test_worker_queues_are_checked_at_construction() -> None:
    with pytest.raises(exceptions.ConfigurationError, match="queues='a\\\\x00'"):
        WorkerOptions(queues=["ok", "a\x00"])  # type: ignore[arg-type]  # the wrong type is the point
    with pytest.raises(exceptions.ConfigurationError, match="queues=.*limited to 50 bytes"):
        WorkerOptions(queues=["q" * 10_000])  # type: ignore[arg-type]  # the wrong type is the point
    with pytest.raises(exceptions.ConfigurationError, match="list of queue names"):
        WorkerOptions(queues="emails")  # type: ignore[arg-type]  # the wrong type is the point
    assert WorkerOptions(queues=["a", "b"]).queues == ("a", "b")  # type: ignore[arg-type]  # lists are accepted
    assert WorkerOptions(queues=[]).queues is None  # type: ignore[arg-type]  # lists are accepted


def test_worker_name_and_intervals_are_checked_at_construction() -> None:
    """A NUL in the name reached PostgreSQL at registration; a NaN interval passed
    `value <= 0`; 1e308 seconds overflowed now() - interval in the stalled sweeper's SQL."""
    with pytest.raises(exceptions.ConfigurationError, match="name='w\\\\x00' is refused"):
        WorkerOptions(name="w\x00")
    with pytest.raises(exceptions.ConfigurationError, match="name=.*limited to 1024 bytes"):
        WorkerOptions(name="w" * 2000)
    option_names = (
        "fetch_job_polling_interval",
        "abort_job_polling_interval",
        "update_heartbeat_interval",
        "stalled_worker_timeout",
    )
    for option in option_names:
        bad: Any
        for bad in (float("nan"), float("inf"), 1e308, 0, -1, "5", True):
            with pytest.raises(exceptions.ConfigurationError, match=f"{option}="):
                WorkerOptions.build({option: bad})
    limit = validation.MAX_DELAY_SECONDS
    options = WorkerOptions(stalled_worker_timeout=limit, fetch_job_polling_interval=limit)
    assert (options.stalled_worker_timeout, options.name) == (limit, None)
    assert WorkerOptions(name="w" * 1024).name == "w" * 1024
    assert WorkerOptions(name="").name == ""  # as before: an empty name (--name=) is kept


async def test_worker_start_refuses_bad_queues_before_any_query() -> None:
    connector = InMemoryConnector()
    app = pc.App(connector=connector)
    async with app.open_async():
        with pytest.raises(exceptions.ConfigurationError, match="queues="):
            await app.run_worker_async(queues=["a\x00"], wait=False)
    assert connector.workers == {}  # refused before registering


def test_task_declaration_checks_every_name() -> None:
    app = _app()
    for options, field in (
        ({"queue": "a\x00"}, "queue"),
        ({"lock": "l" * 1025}, "lock"),
        ({"queueing_lock": "a\ud800"}, "queueing_lock"),
        ({"name": "n\x00"}, "task"),
        ({"aliases": ["ok", "bad\x00"]}, "task"),
        ({"priority": 2**31}, "priority"),
        ({"priority": "high"}, "priority"),
    ):
        with pytest.raises(exceptions.ConfigurationError, match=f"{field}="):
            app.task(**options)(lambda: None)


def test_periodic_declarations_check_id_and_options() -> None:
    app = _app()

    def task(timestamp: int) -> None:
        return None

    with pytest.raises(exceptions.ConfigurationError, match="periodic_id=.*257 bytes"):
        app.periodic(cron="* * * * *", periodic_id="p" * 257)(app.task(name="a")(task))
    with pytest.raises(exceptions.ConfigurationError, match="queue="):
        app.periodic(cron="* * * * *", queue="a\x00")(app.task(name="b")(task))
    with pytest.raises(exceptions.ConfigurationError, match="priority="):
        app.periodic(cron="* * * * *", priority=1.5)(app.task(name="c")(task))  # type: ignore[arg-type]  # the wrong type is the point
    app.periodic(cron="* * * * *", periodic_id="")(app.task(name="d")(task))  # the default id


@pytest.mark.parametrize("max_delay", ["soon", -5, 0, float("nan"), float("inf"), True, None])
def test_max_delay_is_refused_at_construction(max_delay: Any) -> None:
    with pytest.raises(exceptions.ConfigurationError, match="max_delay="):
        _app(periodic_defaults={"max_delay": max_delay})


def test_periodic_defaults_are_frozen_and_unknown_keys_refused() -> None:
    app = _app(periodic_defaults={"max_delay": 30})
    assert app.periodic_options == validation.PeriodicOptions(max_delay=30.0)
    assert app.periodic_defaults == {"max_delay": 30.0}
    with pytest.raises(AttributeError):
        app.periodic_options.max_delay = 5  # type: ignore[misc]
    with pytest.raises(exceptions.ConfigurationError, match="unknown option.*max_dealy"):
        _app(periodic_defaults={"max_dealy": 30})
    with pytest.raises(exceptions.ConfigurationError, match="expected a dict"):
        _app(periodic_defaults=[("max_delay", 3)])


@pytest.mark.parametrize("paths", ["shop.tasks", ["shop tasks"], [3], ["shop..tasks"], 5])
def test_import_paths_are_checked_at_construction(paths: Any) -> None:
    with pytest.raises(exceptions.ConfigurationError, match="import_paths"):
        _app(import_paths=paths)


def test_priority_is_checked_in_one_place() -> None:
    assert validation.check_priority(-(2**31)) == -(2**31)
    for bad in (True, 1.0, 2**31, "1"):
        with pytest.raises(exceptions.ConfigurationError, match="priority="):
            validation.check_priority(bad)


def test_docs_limits_table_matches_the_code() -> None:
    text = DOCS.read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d+) \|", text, flags=re.MULTILINE))
    assert rows == {field: str(limit.max_bytes) for field, limit in validation.LIMITS.items()}
