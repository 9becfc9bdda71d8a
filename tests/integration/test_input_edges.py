# ruff: noqa: F811  (the contract suite's fixtures are imported, then requested by name)
"""Issue 14: names and arguments at the edges, refused client-side, on every connector.

Runs on the contract suite's CASES (the five real connectors, the Django
connector and the in-memory one): each bad input is refused with an error
naming the field, the limit and the fix, nothing reaches the database, and the
caller's transaction (Django `atomic()`, `connection=`) stays usable.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
from typing import Any

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions, manager, validation
from tests.integration.connector_cases import (  # noqa: F401 - fixtures
    _forget_django_aliases,
    async_harness,
    harness,
    transactional_harness,
)

NUL = "a\x00b"
SURROGATE = "a\ud800b"


def _incompressible(size: int) -> str:
    """`size` ASCII characters that no compression shrinks (random bytes, base64)."""
    return base64.b64encode(os.urandom(size))[:size].decode()


def _too_long(field: str) -> str:
    return "é" * (validation.LIMITS[field].max_bytes // 2 + 1)  # 2 bytes each


BAD_NAMES = [
    (field, label, value)
    for field in ("queue", "task", "lock", "queueing_lock")
    for label, value in (
        ("nul", NUL),
        ("surrogate", SURROGATE),
        ("too_long", _too_long(field)),
        ("control", "a\nb"),
    )
]


def _configure(app: pc.App, field: str, value: str) -> Any:
    if field == "task":
        return app.configure_task(value)
    options: dict[str, Any] = {field: value}
    return app.configure_task("t", **options)


def _assert_names_field_and_limit(error: BaseException, field: str) -> None:
    message = str(error)
    assert f"{field}=" in message
    limit = validation.LIMITS[field]
    assert f"{limit.max_bytes} bytes" in message
    assert len(message) < 600, "the value must be shortened in the message"


@pytest.mark.parametrize(
    ("field", "label", "value"), BAD_NAMES, ids=[f"{f}-{kind}" for f, kind, _ in BAD_NAMES]
)
def test_bad_names_are_refused_before_sql_sync(harness, field: str, label: str, value: str) -> None:
    with harness.app().open() as app:
        with pytest.raises(exceptions.ConfigurationError) as error:
            _configure(app, field, value).defer(x=1)
        _assert_names_field_and_limit(error.value, field)
        # Nothing was sent, the pool's connection is fine: a good defer works right after.
        assert app.configure_task("ok").defer() > 0
    assert [name for name, _ in harness.jobs()] == ["ok"]


@pytest.mark.parametrize(
    ("field", "label", "value"),
    BAD_NAMES[::3],
    ids=[f"{f}-{kind}" for f, kind, _ in BAD_NAMES[::3]],
)
async def test_bad_names_are_refused_before_sql_async(
    harness, field: str, label: str, value: str
) -> None:
    async with harness.app().open_async() as app:
        with pytest.raises(exceptions.ConfigurationError):
            await _configure(app, field, value).batch_defer_async({"x": 1}, {"x": 2})
        assert await app.configure_task("ok").defer_async() > 0
    assert [name for name, _ in harness.jobs()] == ["ok"]


@pytest.mark.parametrize("field", ["queue", "lock", "queueing_lock", "task"])
def test_a_refused_name_leaves_the_callers_transaction_usable(
    transactional_harness, field: str
) -> None:
    harness = transactional_harness
    with harness.app().open() as app:
        with harness.case.transaction(harness.url, True) as conn:
            app.job_manager.defer_job(app.configure_task("before").make_new_job(), connection=conn)
            for value in (NUL, SURROGATE, _too_long(field)):
                with pytest.raises(exceptions.ConfigurationError):
                    job = _configure(app, field, value).make_new_job()
                    app.job_manager.defer_job(job, connection=conn)
            with pytest.raises(exceptions.ArgumentSerializationError):
                bad_args = app.configure_task("t").make_new_job(text=SURROGATE)
                app.job_manager.defer_job(bad_args, connection=conn)
            app.job_manager.defer_job(app.configure_task("after").make_new_job(), connection=conn)
    assert [name for name, _ in harness.jobs()] == ["before", "after"]


def test_names_at_the_limit_are_stored(harness) -> None:
    """The documented maxima fit the database: a 1024-byte incompressible lock and
    queueing lock pass the btree indexes, a 50-byte (multibyte) queue its check."""
    lock, queueing_lock = _incompressible(1024), _incompressible(1024)
    queue = "é" * 25
    with harness.app().open() as app:
        app.configure_task("t" * 1024, lock=lock, queueing_lock=queueing_lock, queue=queue).defer()
        [job] = app.job_manager.list_jobs(lock=lock)
    assert (job.queue, job.queueing_lock, job.task_name) == (queue, queueing_lock, "t" * 1024)


def test_lookup_filters_are_checked_too(harness) -> None:
    with harness.app().open() as app:
        app.configure_task("t", lock="L").defer()
        with pytest.raises(exceptions.ConfigurationError, match="lock="):
            app.job_manager.list_jobs(lock=NUL)
        with pytest.raises(exceptions.ConfigurationError, match="queue="):
            app.job_manager.list_queues(queue=SURROGATE)
        with pytest.raises(exceptions.ConfigurationError, match="queue="):
            app.job_manager.delete_old_jobs(1, queue=NUL)
        assert [job.lock for job in app.job_manager.list_jobs(lock="L")] == ["L"]


# -- times -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "schedule_in",
    [{"seconds": float("nan")}, {"seconds": float("inf")}, {"days": 400_000}, {"days": -400_000}],
    ids=["nan", "inf", "far-future", "far-past"],
)
def test_delays_the_database_cannot_add_are_refused_before_sql(harness, schedule_in) -> None:
    """now() + a delay past PostgreSQL's timestamps would fail in the database (aborting a
    caller's transaction); the bound (validation.MAX_DELAY_SECONDS) is checked first."""
    with harness.app().open() as app:
        with pytest.raises(exceptions.ConfigurationError, match="schedule_in="):
            app.configure_task("t", schedule_in=schedule_in).defer()
        with pytest.raises(exceptions.ConfigurationError, match="schedule_in="):
            app.configure_task("t", schedule_in=schedule_in).batch_defer({"a": 1}, {"a": 2})
    assert harness.jobs() == []


def test_ages_and_instants_are_checked_too(harness) -> None:
    with harness.app().open() as app:
        job_id = app.configure_task("t").defer()
        for bad in (float("nan"), float("inf"), -1, 10**9, "72", True):
            with pytest.raises(exceptions.ConfigurationError, match="nb_hours="):
                app.job_manager.delete_old_jobs(bad)
        with pytest.raises(exceptions.ConfigurationError, match="has no time zone"):
            app.job_manager.retry_job_by_id(job_id, retry_at=datetime.datetime(2030, 1, 1))
        with pytest.raises(exceptions.ConfigurationError, match="expected an aware datetime"):
            app.job_manager.retry_job_by_id(job_id, retry_at="tomorrow")
        for bad_seconds in (float("inf"), 1e300):
            with pytest.raises(exceptions.ConfigurationError, match="seconds_since_heartbeat="):
                app.job_manager.get_stalled_jobs(seconds_since_heartbeat=bad_seconds)
        # An id filter must fit a bigint (PostgreSQL refused 2**70 with "bigint out of range").
        for field in ("id", "worker_id"):
            for bad_id in (2**63, -(2**63) - 1, "5", True):
                with pytest.raises(exceptions.ConfigurationError, match=f"{field}="):
                    app.job_manager.list_jobs(**{field: bad_id})
        assert app.job_manager.list_jobs(id=2**63 - 1) == []
        # The bounds themselves are fine: 1,000 years back is still a timestamp.
        assert app.job_manager.delete_old_jobs(validation.MAX_DELAY_SECONDS / 3600) == 0
        assert app.job_manager.get_stalled_jobs(validation.MAX_DELAY_SECONDS) == []
    assert harness.jobs() == [("t", {})]


# -- arguments -------------------------------------------------------------------
@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "raw"])
def test_lone_surrogate_in_arguments_is_refused_before_sql(harness, ensure_ascii: bool) -> None:
    def dumps(value: Any) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii)

    with harness.app(json_dumps=dumps).open() as app:
        with pytest.raises(exceptions.ArgumentSerializationError, match="'text'.*lone surrogate"):
            app.configure_task("t").defer(text=SURROGATE)
        with pytest.raises(exceptions.ArgumentSerializationError, match="lone surrogate"):
            app.configure_task("t").batch_defer({"ok": 1}, {"nested": {"deep": [SURROGATE]}})
        # A real pair (an emoji) is fine, escaped or not; so is a backslash before "ud800".
        app.configure_task("t").defer(text="😀", literal="\\ud800")
    assert harness.jobs() == [("t", {"text": "😀", "literal": "\\ud800"})]


def test_arguments_over_max_payload_bytes_are_refused_before_sending(harness) -> None:
    app = pc.App(connector=harness.connector(), max_payload_bytes=1000)
    harness.last_connector = app.connector
    with app.open():
        with pytest.raises(exceptions.ArgumentSerializationError) as error:
            app.configure_task("t").defer(blob="x" * 1000)
        assert "1000 bytes" in str(error.value) and "max_payload_bytes" in str(error.value)
        with pytest.raises(exceptions.ArgumentSerializationError):
            app.configure_task("t").batch_defer({"blob": "small"}, {"blob": "y" * 2000})
        app.configure_task("t").defer(blob="x" * 900)
    assert harness.jobs() == [("t", {"blob": "x" * 900})]


@pytest.mark.parametrize("value", [0, -1, True, "big", 2**40])
def test_max_payload_bytes_is_checked_at_construction(value: Any) -> None:
    with pytest.raises(exceptions.ConfigurationError, match="max_payload_bytes"):
        pc.App(connector=pc.testing.InMemoryConnector(), max_payload_bytes=value)


def test_large_batches_are_split_and_keep_their_order(
    harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each statement carries at most DEFER_CHUNK_BYTES of arguments (a larger job alone)."""
    monkeypatch.setattr(manager, "DEFER_CHUNK_BYTES", 2000)
    batch = [{"i": i, "pad": "p" * 300} for i in range(20)] + [{"i": 20, "pad": "q" * 5000}]
    with harness.app().open() as app:
        ids = app.configure_task("bulk").batch_defer(*batch)
    assert ids == sorted(ids) and len(set(ids)) == 21
    assert harness.jobs() == [("bulk", kwargs) for kwargs in batch]


def test_a_split_batch_is_all_or_nothing_in_the_callers_transaction(
    transactional_harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two chunks sharing a queueing lock: the second clashes with the first; the
    caller's transaction holds both, so nothing of the batch remains."""
    harness = transactional_harness
    monkeypatch.setattr(manager, "DEFER_CHUNK_BYTES", 500)
    with harness.app().open() as app:
        app.configure_task("before").defer()
        template = app.configure_task("bulk", queueing_lock="Q").job
        texts = [json.dumps({"i": i, "pad": "p" * 400}) for i in range(2)]
        assert (
            len(__import__("procrastinate_core.serialization").serialization.chunked(texts, 500))
            == 2
        )
        with pytest.raises(exceptions.AlreadyEnqueued):
            with harness.case.transaction(harness.url, True) as conn:
                app.job_manager.defer_from_template(template, texts, connection=conn)
    assert [name for name, _ in harness.jobs()] == ["before"]


def test_chunking_is_by_size() -> None:
    from procrastinate_core import serialization

    texts = ["a" * 10, "b" * 10, "c" * 25, "d" * 5, "e" * 5]
    assert serialization.chunked(texts, 20) == [texts[0:2], texts[2:3], texts[3:5]]
    assert serialization.chunked([], 20) == [[]]


# -- keyword arguments against the task's signature ---------------------------------
def _tasks(app: pc.App) -> tuple[Any, Any, Any]:
    @app.task(name="send")
    def send(to: str, subject: str = "hi", *, cc: list[str] | None = None) -> None:
        return None

    @app.task(name="loose", check_kwargs=False)
    def loose(to: str) -> None:
        return None

    @app.task(name="ctx", pass_context=True)
    def ctx(context: Any, n: int) -> None:
        return None

    return send, loose, ctx


def test_defer_checks_keyword_arguments_against_the_signature(harness) -> None:
    app = harness.app()
    send, loose, ctx = _tasks(app)
    with app.open():
        with pytest.raises(exceptions.TaskArgumentsError) as error:
            send.defer(to="a", subjet="typo")
        message = str(error.value)
        assert "unknown argument(s) ['subjet']" in message and "check_kwargs=False" in message
        with pytest.raises(exceptions.TaskArgumentsError, match=r"missing argument\(s\) \['to'\]"):
            send.defer(subject="x")
        with pytest.raises(exceptions.TaskArgumentsError, match="missing"):
            send.batch_defer({"to": "a"}, {"cc": []})  # the whole batch is refused
        with pytest.raises(exceptions.TaskArgumentsError, match="unknown"):
            send.configure(task_kwargs={"bcc": 1}).defer(to="a")
        with pytest.raises(exceptions.TaskArgumentsError, match="missing"):
            ctx.defer()
        # Not dicts of keyword arguments (an AttributeError / TypeError before):
        with pytest.raises(exceptions.TaskArgumentsError, match="5 is not a dict"):
            send.batch_defer({"to": "a"}, 5)  # type: ignore[arg-type]
        with pytest.raises(exceptions.ConfigurationError, match=r"task_kwargs=\[1\]"):
            send.configure(task_kwargs=[1])  # type: ignore[arg-type]
        with pytest.raises(exceptions.ConfigurationError, match="task_kwargs="):
            app.configure_task("send", task_kwargs={1: "a"})  # type: ignore[dict-item]
        send.defer(to="a", cc=["b"])
        ctx.defer(n=1)
        loose.defer(anything=1)  # opted out
        app.configure_task("send").defer(whatever=2)  # by name: never checked
    assert [name for name, _ in harness.jobs()] == ["send", "ctx", "loose", "send"]


async def test_defer_async_checks_keyword_arguments(harness) -> None:
    app = harness.app()
    send, _, _ = _tasks(app)
    async with app.open_async():
        with pytest.raises(exceptions.TaskArgumentsError):
            await send.defer_async(to="a", nope=1)
        with pytest.raises(exceptions.TaskArgumentsError):
            await send.batch_defer_async({"to": "a"}, {"nope": 1})
        await send.defer_async(to="a")
    assert [name for name, _ in harness.jobs()] == ["send"]


def test_a_refused_call_leaves_the_callers_transaction_usable(transactional_harness) -> None:
    harness = transactional_harness
    app = harness.app()
    send, _, _ = _tasks(app)
    with app.open():
        with harness.case.transaction(harness.url, True) as conn:
            with pytest.raises(exceptions.TaskArgumentsError):
                app.job_manager.defer_job(
                    send.configure().make_new_job(too="typo"), connection=conn
                )
            app.job_manager.defer_job(send.configure().make_new_job(to="a"), connection=conn)
    assert harness.jobs() == [("send", {"to": "a"})]


def test_periodic_tasks_must_take_timestamp() -> None:
    app = pc.App(connector=pc.testing.InMemoryConnector())

    with pytest.raises(exceptions.ConfigurationError, match="timestamp"):

        @app.periodic(cron="* * * * *")
        @app.task(name="no_timestamp")
        def no_timestamp() -> None:
            return None

    @app.periodic(cron="* * * * *", task_kwargs={"x": 1})
    @app.task(name="fine")
    def fine(timestamp: int, x: int) -> None:
        return None


def test_a_split_batch_is_all_or_nothing_without_a_callers_transaction(
    harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection= given: the chunks share one transaction of the connector."""
    monkeypatch.setattr(manager, "DEFER_CHUNK_BYTES", 500)
    texts = [json.dumps({"i": i, "pad": "p" * 400}) for i in range(2)]
    with harness.app().open() as app:
        app.configure_task("before").defer()
        template = app.configure_task("bulk", queueing_lock="Q").job
        with pytest.raises(exceptions.AlreadyEnqueued):
            app.job_manager.defer_from_template(template, texts)  # chunk 2 clashes with chunk 1
        assert app.configure_task("after").defer() > 0  # the connector is usable afterwards
        ok = app.configure_task("bulk").job
        ids = app.job_manager.defer_from_template(ok, texts)
    assert len(ids) == 2 and ids == sorted(ids)
    assert [name for name, _ in harness.jobs()] == ["before", "after", "bulk", "bulk"]


async def test_a_split_batch_is_all_or_nothing_async(
    harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager, "DEFER_CHUNK_BYTES", 500)
    batch = [{"i": i, "pad": "p" * 400} for i in range(3)]
    async with harness.app().open_async() as app:
        with pytest.raises(exceptions.AlreadyEnqueued):
            await app.configure_task("bulk", queueing_lock="Q").batch_defer_async(*batch)
        ids = await app.configure_task("bulk").batch_defer_async(*batch)
    assert len(ids) == 3
    assert harness.jobs() == [("bulk", kwargs) for kwargs in batch]
