"""Task names are unique in an app: a clash raises TaskAlreadyRegistered (procrastinate's
name, a ConfigurationError here too) and leaves every registry as it was."""

from __future__ import annotations

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions
from procrastinate_core.testing import InMemoryConnector


@pytest.fixture
def app() -> pc.App:
    return pc.App(connector=InMemoryConnector())


def test_a_second_task_under_a_taken_name(app):
    @app.task(name="send")
    def first() -> None: ...

    with pytest.raises(exceptions.TaskAlreadyRegistered, match="'send' is already used by"):

        @app.task(name="send")
        def second() -> None: ...

    assert app.tasks["send"] is first
    assert issubclass(exceptions.TaskAlreadyRegistered, exceptions.ConfigurationError)


def test_a_refused_alias_registers_none_of_the_tasks_names(app):
    @app.task(name="old")
    def old() -> None: ...

    with pytest.raises(exceptions.TaskAlreadyRegistered):

        @app.task(name="new", aliases=["legacy", "old"])
        def new() -> None: ...

    assert "new" not in app.tasks and "legacy" not in app.tasks  # nothing left behind


def test_add_task_alias_refuses_a_taken_name_and_keeps_the_aliases(app):
    @app.task(name="a")
    def a() -> None: ...

    @app.task(name="b")
    def b() -> None: ...

    with pytest.raises(exceptions.TaskAlreadyRegistered, match="alias 'a'"):
        app.add_task_alias(b, "a")
    assert b.aliases == [] and app.tasks["a"] is a
    app.add_task_alias(b, "b_old")
    assert app.tasks["b_old"] is b


def test_a_namespace_clash_leaves_both_blueprints_as_they_were(app):
    first = pc.Blueprint()

    @first.task(name="send")
    def send() -> None: ...

    app.add_tasks_from(first, namespace="mail")
    second = pc.Blueprint()

    @second.task(name="send")
    def other_send() -> None: ...

    with pytest.raises(exceptions.TaskAlreadyRegistered, match="mail:send already registered"):
        app.add_tasks_from(second, namespace="mail")
    assert other_send.name == "send" and other_send.blueprint is second
    assert app.tasks["mail:send"] is send
    app.add_tasks_from(second, namespace="mail2")
    assert app.tasks["mail2:send"] is other_send


def test_a_periodic_schedule_declared_twice(app):
    @app.periodic(cron="* * * * *")
    @app.task(name="tick")
    def tick(timestamp: int) -> None: ...

    with pytest.raises(exceptions.TaskAlreadyRegistered, match="declared twice"):
        app.periodic(cron="*/5 * * * *")(tick)


def test_the_version_is_the_distributions():
    import importlib.metadata

    assert pc.__version__ == importlib.metadata.version("procrastinate-core")


def test_check_connection_is_on_the_app_too(app):
    with app.open():
        assert app.check_connection() is True
