"""RELIABILITY F19: malformed cron expressions fail at decoration, naming task and expression."""

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions


@pytest.fixture
def app():
    return pc.App(connector=pc.SyncPsycopgConnector(host="unused.invalid"))


@pytest.mark.parametrize(
    "cron, fragment",
    [
        ("61 * * * *", "is invalid"),
        ("* * * *", "is invalid"),
        ("*/0 * * * *", "is invalid"),
        ("every day", "is invalid"),
        ("0 0 31 2 *", "never matches"),
        ("", "is not a cron expression"),
    ],
)
def test_invalid_cron_fails_at_decoration(app, cron, fragment):
    with pytest.raises(exceptions.InvalidCronExpression) as info:

        @app.periodic(cron=cron)
        @app.task(name="reports.nightly")
        def nightly(timestamp):
            pass

    message = str(info.value)
    assert "'reports.nightly'" in message
    assert repr(cron) in message
    assert fragment in message
    assert app.periodic_tasks == []


def test_valid_crons_including_seconds_are_accepted(app):
    @app.periodic(cron="*/5 * * * * */10", periodic_id="fast")
    @app.periodic(cron="@daily", periodic_id="daily")
    @app.task
    def tick(timestamp):
        pass

    assert [p.periodic_id for p in app.periodic_tasks] == ["daily", "fast"]
    ticks = list(app.periodic_tasks[1].ticks_between(0, 60))
    assert ticks == [10, 20, 30, 40, 50]


def test_periodic_must_decorate_a_task(app):
    with pytest.raises(exceptions.ConfigurationError, match="put it above @app.task"):

        @app.periodic(cron="* * * * *")
        def plain(timestamp):
            pass


def test_periodic_declared_twice_is_refused(app):
    @app.task
    def t(timestamp):
        pass

    app.periodic(cron="* * * * *")(t)
    with pytest.raises(exceptions.ConfigurationError, match="declared twice"):
        app.periodic(cron="*/2 * * * *")(t)


def test_periodic_unknown_option_is_refused(app):
    @app.task
    def t(timestamp):
        pass

    with pytest.raises(exceptions.ConfigurationError, match="unknown option"):
        app.periodic(cron="* * * * *", schedule_in={"seconds": 1})(t)


def test_a_periodic_task_with_a_unique_key_is_accepted(app):
    """Its ticks carry the key (migration 0015; tests/integration/test_periodic_unique.py)."""

    @app.task(name="digest", unique_key="digest", on_conflict="ignore")
    def digest(timestamp):
        pass

    app.periodic(cron="* * * * *")(digest)
    assert [p.task.name for p in app.periodic_tasks] == ["digest"]
