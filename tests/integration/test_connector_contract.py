"""The connector contract: the same tests against every connector, on a real PostgreSQL.

Each connector is described by a `Case` in CASES:

- `build(dsn, **hooks)` makes the connector for a database (`dsn` is a
  postgresql:// URL; `hooks` are json_dumps/json_loads);
- `kind` is "async" (runs workers, listens) or "sync" (defers only);
- `real`: talks to PostgreSQL (so it must refuse use before open and report
  a dead database); the in-memory connector is not;
- `transaction`: a context manager factory `(dsn, commit) -> connection` that
  opens a connection of the connector's library, begins a transaction, yields
  the connection, and commits or rolls back; None if the library cannot join
  a caller's transaction.

To add a connector (the Django one, say), write one more `Case` and append it
to CASES: `Case("django", build=..., kind="sync", transaction=...)`. Its
`build` receives the test database's URL; a connector configured elsewhere
(Django's DATABASES) can point its settings at that URL there. Every test
below then runs for it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import decimal
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions, sql
from procrastinate_core.connectors.base import BaseConnector
from procrastinate_core.jobs import Status
from procrastinate_core.testing import InMemoryConnector
from procrastinate_core.worker_operations import JobOutcome
from tests.django import contract as django_contract

DEAD_URL = "postgresql://ghost:s3cret-pw@127.0.0.1:1/nowhere?connect_timeout=2"


@contextlib.contextmanager
def psycopg3_transaction(dsn: str, commit: bool) -> Iterator[Any]:
    with psycopg.connect(dsn) as conn:
        with conn.transaction(force_rollback=not commit):
            yield conn


@contextlib.contextmanager
def psycopg2_transaction(dsn: str, commit: bool) -> Iterator[Any]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        yield conn  # psycopg2 opens a transaction at the first statement
        conn.commit() if commit else conn.rollback()
    finally:
        conn.close()


@contextlib.contextmanager
def sqlalchemy_transaction(dsn: str, commit: bool) -> Iterator[Any]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            yield conn
            transaction.commit() if commit else transaction.rollback()
    finally:
        engine.dispose()


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[..., BaseConnector]
    kind: str
    real: bool = True
    transaction: Callable[[str, bool], contextlib.AbstractContextManager[Any]] | None = None
    #: False for a connector on a connection someone else owns (Django's): usable without open().
    requires_open: bool = True


CASES = [
    Case(
        "psycopg",
        lambda dsn, **kw: pc.PsycopgConnector(conninfo=dsn, min_size=1, max_size=4, **kw),
        "async",
        transaction=psycopg3_transaction,
    ),
    Case(
        "sync_psycopg",
        lambda dsn, **kw: pc.SyncPsycopgConnector(conninfo=dsn, min_size=1, max_size=4, **kw),
        "sync",
        transaction=psycopg3_transaction,
    ),
    Case(
        "aiopg",
        lambda dsn, **kw: pc.AiopgConnector(dsn=dsn, minsize=1, maxsize=4, **kw),
        "async",
        transaction=psycopg2_transaction,
    ),
    Case(
        "psycopg2",
        lambda dsn, **kw: pc.Psycopg2Connector(dsn=dsn, minconn=1, maxconn=4, **kw),
        "sync",
        transaction=psycopg2_transaction,
    ),
    Case(
        "sqlalchemy",
        lambda dsn, **kw: pc.SQLAlchemyPsycopg2Connector(dsn=dsn, pool_size=4, **kw),
        "sync",
        transaction=sqlalchemy_transaction,
    ),
    Case("in_memory", lambda dsn, **kw: InMemoryConnector(**kw), "async", real=False),
    Case(
        "django",
        lambda dsn, **kw: django_contract.build(dsn, **kw),
        "sync",
        transaction=lambda dsn, commit: django_contract.transaction(dsn, commit),
        requires_open=False,
    ),
]
REAL = [case for case in CASES if case.real]
NEEDS_OPEN = [case for case in REAL if case.requires_open]


def url_of(params: dict[str, str]) -> str:
    auth = quote(params.get("user", ""), safe="")
    if params.get("password"):
        auth += ":" + quote(params["password"], safe="")
    host, port, dbname = params.get("host", ""), params.get("port", "5432"), params["dbname"]
    if host.startswith("/"):  # a socket directory (embedded server)
        return f"postgresql://{auth}@/{dbname}?host={quote(host, safe='')}&port={port}"
    return f"postgresql://{auth + '@' if auth else ''}{host}:{port}/{dbname}"


class Harness:
    """One connector under test, with an independent view of the jobs it wrote."""

    def __init__(self, case: Case, url: str | None, db_conn: Any) -> None:
        self.case = case
        self.url = url or ""
        self.db_conn = db_conn

    def connector(self, **hooks: Any) -> BaseConnector:
        return self.case.build(self.url, **hooks)

    def app(self, **hooks: Any) -> pc.App:
        app = pc.App(connector=self.connector(**hooks))
        self.last_connector = app.connector
        return app

    def jobs(self) -> list[tuple[str, Any]]:
        """(task_name, args) of every job, by id, read without the connector under test."""
        if self.db_conn is None:
            stored = self.last_connector.jobs  # type: ignore[attr-defined]
            return [(job["task_name"], job["args"]) for _, job in sorted(stored.items())]
        return self.db_conn.execute("SELECT task_name, args FROM pcq_jobs ORDER BY id").fetchall()


def _make_harness(request: pytest.FixtureRequest) -> Harness:
    case: Case = request.param
    if not case.real:
        return Harness(case, None, None)
    params = request.getfixturevalue("db_params")
    return Harness(case, url_of(params), request.getfixturevalue("db_conn"))


def _ids(cases: list[Case]) -> list[str]:
    return [case.name for case in cases]


SYNC = [case for case in CASES if case.kind == "sync"]
ASYNC = [case for case in CASES if case.kind == "async"]
REAL_ASYNC = [case for case in REAL if case.kind == "async"]
TRANSACTIONAL = [case for case in CASES if case.transaction is not None]


@pytest.fixture(autouse=True)
def _forget_django_aliases() -> Iterator[None]:
    """Django aliases point at this test's database, which is dropped after it."""
    yield
    django_contract.forget_all()


@pytest.fixture(params=CASES, ids=_ids(CASES))
def harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


@pytest.fixture(params=SYNC, ids=_ids(SYNC))
def sync_harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


@pytest.fixture(params=ASYNC, ids=_ids(ASYNC))
def async_harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


@pytest.fixture(params=TRANSACTIONAL, ids=_ids(TRANSACTIONAL))
def transactional_harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


@pytest.fixture(params=REAL, ids=_ids(REAL))
def real_case(request: pytest.FixtureRequest) -> Case:
    return request.param


# -- lifecycle -----------------------------------------------------------------
def test_open_and_close_are_idempotent_sync(harness):
    app = harness.app()
    app.open()
    app.open()
    assert app.configure_task("t").defer() > 0
    app.close()
    app.close()
    app.open()  # and it can be opened again
    assert app.configure_task("t").defer() > 0
    app.close()
    assert [name for name, _ in harness.jobs()] == ["t", "t"]


async def test_open_and_close_are_idempotent_async(harness):
    app = harness.app()
    await app.open_async()
    await app.open_async()
    assert await app.configure_task("t").defer_async() > 0
    await app.close_async()
    await app.close_async()
    async with app.open_async():
        assert await app.configure_task("t").defer_async() > 0
    assert [name for name, _ in harness.jobs()] == ["t", "t"]


def test_rows_are_dicts(harness):
    with harness.app().open() as app:
        row = app.connector.get_sync_connector().execute_query_one("schema_is_installed")
        assert type(row) is dict and row == {"installed": True}
        assert (
            app.connector.get_sync_connector().execute_query_one("job_get_status", {"job_id": 0})
            is None
        )


@pytest.mark.parametrize("real_case", NEEDS_OPEN, ids=_ids(NEEDS_OPEN))
def test_used_before_open_or_after_close_says_how_to_open(real_case, db_params):
    app = pc.App(connector=real_case.build(url_of(db_params)))
    with pytest.raises(exceptions.AppNotOpen, match=r"app\.open"):
        app.configure_task("t").defer()
    with app.open():
        app.configure_task("t").defer()
    with pytest.raises(exceptions.AppNotOpen, match=r"app\.open"):
        app.configure_task("t").defer()


@pytest.mark.parametrize("real_case", NEEDS_OPEN, ids=_ids(NEEDS_OPEN))
async def test_used_before_open_async_says_how_to_open(real_case, db_params):
    app = pc.App(connector=real_case.build(url_of(db_params)))
    with pytest.raises(exceptions.AppNotOpen, match=r"app\.open"):
        await app.configure_task("t").defer_async()


def test_dead_database_at_open_names_target_never_password(real_case):
    connector = real_case.build(DEAD_URL)
    with pytest.raises(exceptions.DatabaseConnectionError) as info:
        pc.App(connector=connector).open()
    message = str(info.value)
    for part in ("host=127.0.0.1", "port=1", "dbname=nowhere"):
        assert part in message
    assert "s3cret-pw" not in message and "s3cret-pw" not in repr(info.value)


async def test_dead_database_at_open_async_names_target_never_password(real_case):
    connector = real_case.build(DEAD_URL)
    with pytest.raises(exceptions.DatabaseConnectionError) as info:
        await pc.App(connector=connector).open_async()
    message = str(info.value)
    assert "port=1" in message and "dbname=nowhere" in message and "s3cret-pw" not in message


def test_driver_errors_come_out_translated(real_case, db_params):
    with pc.App(connector=real_case.build(url_of(db_params))).open() as app:
        with pytest.raises(exceptions.ConnectorException) as info:
            app.connector.get_sync_connector().execute_query_one(
                "job_get_status", {"job_id": "not a number"}
            )
        assert not isinstance(info.value, exceptions.DatabaseConnectionError)
        assert info.value.__cause__ is not None  # the driver's exception, kept for debugging
        # The pool is still usable after the error.
        assert app.configure_task("t").defer() > 0


# -- deferring -----------------------------------------------------------------
def test_batch_defer_a_thousand_jobs_sync(harness):
    with harness.app().open() as app:
        ids = app.configure_task("bulk").batch_defer(*({"i": i, "s": f"n{i}"} for i in range(1000)))
        single = app.configure_task("one").defer(x=1)
    assert len(set(ids)) == 1000 and single > max(ids)
    jobs = harness.jobs()
    assert jobs[:1000] == [("bulk", {"i": i, "s": f"n{i}"}) for i in range(1000)]
    assert jobs[1000:] == [("one", {"x": 1})]


async def test_batch_defer_a_thousand_jobs_async(harness):
    async with harness.app().open_async() as app:
        ids = await app.configure_task("bulk").batch_defer_async(*({"i": i} for i in range(1000)))
        single = await app.configure_task("one").defer_async(x=[1, "two"])
    assert len(set(ids)) == 1000 and single > max(ids)
    jobs = harness.jobs()
    assert jobs == [("bulk", {"i": i}) for i in range(1000)] + [("one", {"x": [1, "two"]})]


def test_queueing_lock_clash_is_already_enqueued_and_batch_is_all_or_nothing(harness):
    with harness.app().open() as app:
        app.configure_task("t", queueing_lock="only").defer()
        with pytest.raises(exceptions.AlreadyEnqueued):
            app.configure_task("t", queueing_lock="only").defer()
        with pytest.raises(exceptions.AlreadyEnqueued):
            app.configure_task("u").batch_defer({"a": 1}, {"a": 2})  # fine
            app.configure_task("v", queueing_lock="only").batch_defer({"b": 1})
    assert [name for name, _ in harness.jobs()] == ["t", "u", "u"]


class _Encoder(json.JSONEncoder):
    def default(self, value: Any) -> Any:
        if isinstance(value, decimal.Decimal):
            return {"__decimal__": str(value)}
        if isinstance(value, datetime.datetime):
            return {"__datetime__": value.isoformat()}
        return super().default(value)


def _decode(obj: dict[str, Any]) -> Any:
    if "__decimal__" in obj:
        return decimal.Decimal(obj["__decimal__"])
    if "__datetime__" in obj:
        return datetime.datetime.fromisoformat(obj["__datetime__"])
    return obj


HOOKS = {
    "json_dumps": lambda value: json.dumps(value, cls=_Encoder),
    "json_loads": lambda text: json.loads(text, object_hook=_decode),
}


async def test_json_hooks_round_trip(harness):
    when = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    kwargs = {"price": decimal.Decimal("12.30"), "when": when, "plain": [1, None, "x"]}
    app = harness.app(**HOOKS)
    with app.open():
        app.configure_task("sync").defer(**kwargs)
        [job] = app.job_manager.list_jobs(task="sync")
        assert job.task_kwargs == kwargs
    async with app.open_async():
        await app.configure_task("async").defer_async(**kwargs)
        worker_id = await app.job_manager.register_worker_async()
        fetched = await app.job_manager.fetch_jobs_async(worker_id, None, 5)
        assert [job.task_kwargs for job in fetched] == [kwargs, kwargs]
    stored = dict(harness.jobs())["async"]
    assert stored["price"] == {"__decimal__": "12.30"}  # stored as the hook wrote it


# -- the queries, through the job manager ----------------------------------------
# One behaviour per test, so that a connector's first difference does not hide the others.
HOUR = datetime.timedelta(hours=1)


async def _claim(m: Any, worker_id: int, queues: list[str] | None = None) -> list[int]:
    return [job.id for job in await m.fetch_jobs_async(worker_id, queues, 10)]


async def test_fetch_takes_the_best_ready_job_of_each_lock_and_marks_it_doing(harness):
    async with harness.app().open_async() as app:
        m, defer = app.job_manager, app.configure_task
        await defer("a", queue="q1", lock="L", priority=1).defer_async()
        b = await defer("b", queue="q1", lock="L", priority=5).defer_async()
        w = await m.register_worker_async("w1", "host", 42)
        [first] = await m.fetch_jobs_async(w, ["q1"], 10)
        assert first.id == b  # priority first; among jobs sharing a lock only the best ready one
        assert first.status == "doing" and first.claims == 1 and first.worker_id == w


async def test_fetch_skips_other_queues_locked_jobs_and_scheduled_ones(harness):
    async with harness.app().open_async() as app:
        m, defer = app.job_manager, app.configure_task
        await defer("a", queue="q1", lock="L", priority=1).defer_async()
        b = await defer("b", queue="q1", lock="L", priority=5).defer_async()
        c = await defer("c", queue="q2").defer_async()
        await defer("later", schedule_in={"hours": 1}).defer_async()
        w = await m.register_worker_async("w1", "host", 42)
        assert await _claim(m, w, ["q1"]) == [b]  # c is in another queue
        assert await _claim(m, w) == [c]  # a waits while b (same lock) runs; later is not due
        assert await _claim(m, w) == []


async def test_an_outcome_for_the_wrong_attempt_or_worker_is_refused(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        b = await app.configure_task("b").defer_async()
        w = await m.register_worker_async("w1", "host", 42)
        assert await _claim(m, w) == [b]
        assert (
            await m.finish_jobs_async([JobOutcome(b, w, attempt=2, status=Status.SUCCEEDED)])
            == set()
        )
        assert (
            await m.finish_jobs_async([JobOutcome(b, w + 1, attempt=1, status=Status.SUCCEEDED)])
            == set()
        )
        assert await m.get_job_status_async(b) == pc.Status.DOING


async def test_finishing_records_each_outcome_and_frees_the_lock(harness):
    async with harness.app().open_async() as app:
        m, defer = app.job_manager, app.configure_task
        a = await defer("a", queue="q1", lock="L", priority=1).defer_async()
        b = await defer("b", queue="q1", lock="L", priority=5).defer_async()
        c = await defer("c", queue="q2").defer_async()
        w = await m.register_worker_async("w1", "host", 42)
        assert await _claim(m, w, ["q1"]) == [b]
        assert await _claim(m, w) == [c]
        done = await m.finish_jobs_async(
            [
                JobOutcome(b, w, 1, Status.SUCCEEDED, result={"ok": 1}),
                JobOutcome(c, w, 1, Status.FAILED, error={"type": "E"}),
            ]
        )
        assert done == {b, c}
        assert await m.get_job_status_async(b) == pc.Status.SUCCEEDED
        assert await m.get_job_status_async(c) == pc.Status.FAILED
        [job_b] = await m.list_jobs_async(id=b)
        assert job_b.result == {"ok": 1} and job_b.finished_at is not None
        assert await _claim(m, w) == [a]  # the lock is free


async def test_a_job_retried_for_later_is_not_ready(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        a = await app.configure_task("a").defer_async()
        w = await m.register_worker_async("w1", "host", 42)
        assert await _claim(m, w) == [a]
        retry_at = datetime.datetime.now(datetime.timezone.utc) + HOUR
        assert await m.finish_jobs_async([JobOutcome(a, w, 1, Status.TODO, retry_at=retry_at)]) == {
            a
        }
        assert await m.get_job_status_async(a) == pc.Status.TODO
        assert await _claim(m, w) == []


async def test_cancel_a_waiting_job_once(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        later = await app.configure_task("later", schedule_in={"hours": 1}).defer_async()
        assert await m.cancel_job_by_id_async(later) is True
        assert await m.get_job_status_async(later) == pc.Status.CANCELLED
        assert await m.cancel_job_by_id_async(later) is False


async def test_cancel_with_delete_removes_the_job(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        a = await app.configure_task("a").defer_async()
        assert await m.cancel_job_by_id_async(a, delete_job=True) is True
        with pytest.raises(exceptions.JobNotFound):
            await m.get_job_status_async(a)


async def _failed_job(app: pc.App, queue: str = "q2") -> tuple[int, int]:
    """A job that ran once and failed, and the worker that ran it."""
    m = app.job_manager
    c = await app.configure_task("c", queue=queue).defer_async()
    w = await m.register_worker_async("w1", "host", 42)
    assert await _claim(m, w) == [c]
    assert await m.finish_jobs_async([JobOutcome(c, w, 1, Status.FAILED, error={"type": "E"})]) == {
        c
    }
    return c, w


async def test_retry_job_by_id_requeues_a_failed_job_with_a_new_priority(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        c, w = await _failed_job(app)
        assert await m.retry_job_by_id_async(c, priority=9) is True
        [running] = await m.fetch_jobs_async(w, None, 10)
        assert running.id == c and running.priority == 9 and running.claims == 2


async def test_a_running_job_is_aborted_not_cancelled_and_its_history_says_so(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        c, w = await _failed_job(app)
        assert await m.retry_job_by_id_async(c, priority=9) is True
        assert await _claim(m, w) == [c]
        assert await m.cancel_job_by_id_async(c) is False
        assert await m.list_jobs_to_abort_async(w) == []
        assert await m.cancel_job_by_id_async(c, abort=True) is True
        assert await m.list_jobs_to_abort_async(w) == [c]
        events = [
            (e["type"], e["attempt"], e["worker_id"]) for e in await m.list_job_events_async(c)
        ]
        assert events == [
            ("deferred", 0, None),
            ("started", 1, w),
            ("failed", 1, w),
            ("retried", 1, w),
            ("started", 2, w),
            ("abort_requested", 2, w),
        ]


async def _aborted_job(app: pc.App, queue: str = "q2") -> tuple[int, int]:
    """A running job asked to abort, whose worker then stopped beating: recovered as aborted."""
    m = app.job_manager
    c = await app.configure_task("c", queue=queue).defer_async()
    w = await m.register_worker_async("w1", "host", 42)
    assert await _claim(m, w) == [c]
    assert await m.cancel_job_by_id_async(c, abort=True) is True
    assert await m.recover_stalled_jobs_async(3600) == []  # the worker is not stalled yet
    assert await m.recover_stalled_jobs_async(0) == [(c, pc.Status.ABORTED)]
    return c, w


async def test_stalled_recovery_aborts_a_job_asked_to_abort_and_prunes_the_worker(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        c, w = await _aborted_job(app)
        assert await m.get_job_status_async(c) == pc.Status.ABORTED
        assert await m.update_heartbeat_async(w) is False
        assert await m.list_workers_async() == []


async def test_queues_are_counted_by_status_and_old_jobs_deleted(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        await _aborted_job(app, queue="q2")
        b = await app.configure_task("b", queue="q1").defer_async()
        w = await m.register_worker_async("w2", "host", 43)
        assert await _claim(m, w) == [b]
        assert await m.finish_jobs_async([JobOutcome(b, w, 1, Status.SUCCEEDED)]) == {b}
        later = await app.configure_task("later", schedule_in={"hours": 1}).defer_async()
        assert await m.cancel_job_by_id_async(later) is True
        queues = {row["name"]: row for row in await m.list_queues_async()}
        assert queues["q1"]["succeeded"] == 1 and queues["q2"]["aborted"] == 1
        assert queues["default"]["cancelled"] == 1 and queues["default"]["jobs_count"] == 1
        assert await m.delete_old_jobs_async(1) == 0
        assert await m.delete_old_jobs_async(0, include_aborted=True) == 2
        assert [job.id for job in await m.list_jobs_async()] == [later]


async def test_a_periodic_tick_is_deferred_once_and_pruned(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        job = pc.Job(queue="default", task_name="tick", task_kwargs={"timestamp": 100})
        tick = await m.defer_periodic_job_async(job, "", 100)
        assert tick is not None and await m.defer_periodic_job_async(job, "", 100) is None
        assert await m.prune_periodic_defers_async(101) == 1
        assert (await app.schema_manager.get_status_async()).is_current


async def test_worker_heartbeats_and_unregister(harness):
    async with harness.app().open_async() as app:
        m = app.job_manager
        w = await m.register_worker_async("w", "h", 1)
        assert await m.update_heartbeat_async(w) is True
        [row] = await m.list_workers_async()
        assert row["id"] == w and row["name"] == "w" and 0 <= row["heartbeat_age"] < 60
        job_id = await app.configure_task("t").defer_async()
        await m.fetch_jobs_async(w, None, 1)
        await m.unregister_worker_async(w)
        # A running job of a worker that is gone is recovered at once.
        assert await m.recover_stalled_jobs_async(3600) == [(job_id, pc.Status.TODO)]
        # The job forgets its worker; its history says which worker lost it.
        assert [(e["type"], e["worker_id"]) for e in await m.list_job_events_async(job_id)] == [
            ("deferred", None),
            ("started", w),
            ("recovered", w),
        ]
        assert (await m.list_jobs_async(id=job_id))[0].worker_id is None


# -- workers and notifications ---------------------------------------------------
def test_sync_connectors_refuse_worker_work(sync_harness):
    app = sync_harness.app()
    with pytest.raises(
        exceptions.SyncConnectorConfigurationError, match="PsycopgConnector or AiopgConnector"
    ):
        asyncio.run(app.connector.listen_notify(["pcq_any"], lambda c, p: None))
    with pytest.raises(exceptions.SyncConnectorConfigurationError, match="cannot run a worker"):
        app.run_worker(wait=False)


async def test_listen_notify(async_harness):
    async with async_harness.app().open_async() as app:
        received: list[tuple[str, str]] = []
        listening = asyncio.Event()
        got = asyncio.Event()

        def on_notification(channel: str, payload: str) -> None:
            received.append((channel, payload))
            if len(received) >= 2:
                got.set()

        task = asyncio.create_task(
            app.connector.listen_notify(
                ["pcq_any", "pcq_q_my queue"], on_notification, listening.set
            )
        )
        try:
            await asyncio.wait_for(listening.wait(), 10)
            await app.configure_task("t", queue="my queue").defer_async()
            await asyncio.wait_for(got.wait(), 10)
            assert sorted(received) == [("pcq_any", ""), ("pcq_q_my queue", "")]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- joining the caller's transaction -------------------------------------------
def test_defer_joins_an_external_transaction(transactional_harness):
    harness = transactional_harness
    with harness.app().open() as app:
        job = app.configure_task("t").make_new_job(x=1)
        with harness.case.transaction(harness.url, False) as conn:
            app.job_manager.defer_job(job, connection=conn)
        assert harness.jobs() == []
        with harness.case.transaction(harness.url, True) as conn:
            app.job_manager.defer_job(job, connection=conn)
        assert harness.jobs() == [("t", {"x": 1})]


def test_worker_runs_jobs_and_a_sync_job_defers_through_the_automatic_sync_connector(async_harness):
    app = async_harness.app()
    seen: list[str] = []

    @app.task(name="child")
    async def child(x: int) -> None:
        seen.append(f"child {x}")

    @app.task(name="parent")
    def parent(x: int) -> None:
        # The worker has the app open (async): this sync defer takes the after-open path.
        child.defer(x=x + 1)
        seen.append(f"parent {x}")

    with app.open():  # before-open path: the sync counterpart (or the connector itself)
        parent.defer(x=1)
    app.run_worker(wait=False)
    assert seen == ["parent 1", "child 2"]
    assert [name for name, _ in async_harness.jobs()] == ["parent", "child"]
    with app.open():
        statuses = [job.status for job in app.job_manager.list_jobs()]
    assert statuses == ["succeeded", "succeeded"]


@pytest.mark.parametrize("case", REAL_ASYNC, ids=_ids(REAL_ASYNC))
def test_sync_defer_from_plain_code_while_open_async_raises_the_documented_error(case, db_params):
    app = pc.App(connector=case.build(url_of(db_params)))
    caught: list[str] = []

    async def main() -> None:
        async with app.open_async():
            thread = threading.Thread(target=lambda: _defer_catching(app, caught))
            thread.start()
            await asyncio.get_running_loop().run_in_executor(None, thread.join)

    asyncio.run(main())
    assert caught and "sync_to_async" in caught[0]


def _defer_catching(app: pc.App, caught: list[str]) -> None:
    try:
        app.configure_task("t").defer()
    except RuntimeError as exc:
        caught.append(str(exc))


ALL_VERSIONS = [migration.version for migration in sql.migrations()]


def test_migrations_apply_through_every_connector_in_one_transaction(
    real_case, pg_server, empty_db_name
):
    url = url_of({**pg_server.params, "dbname": empty_db_name})
    app = pc.App(connector=real_case.build(url))
    with app.open():
        connector = app.connector.get_sync_connector()
        # A failing script leaves nothing behind: it ran as one transaction.
        with pytest.raises(exceptions.ConnectorException):
            connector.execute_script(
                "CREATE TABLE half_done (id int); SELECT * FROM no_such_table;"
            )
        assert connector.execute_query_one("schema_is_installed") == {"installed": False}
        assert app.schema_manager.apply_schema() == ALL_VERSIONS
        assert app.schema_manager.get_status().is_current
    with psycopg.connect(pg_server.conninfo(empty_db_name)) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)


async def test_migrations_apply_async_through_every_connector(real_case, pg_server, empty_db_name):
    app = pc.App(connector=real_case.build(url_of({**pg_server.params, "dbname": empty_db_name})))
    async with app.open_async():
        with pytest.raises(exceptions.ConnectorException):
            await app.connector.execute_script_async("CREATE TABLE half_done (id int); SELECT 1/0;")
        assert await app.schema_manager.apply_schema_async() == ALL_VERSIONS
        assert (await app.schema_manager.get_status_async()).is_current
        assert await app.connector.execute_query_one_async("job_get_status", {"job_id": 1}) is None


# -- procrastinate's stalled-jobs recipe ------------------------------------------
async def test_get_stalled_jobs_and_retry_job(harness):
    app = harness.app()
    async with app.open_async():
        m = app.job_manager
        job_id = await app.configure_task("s", queue="q").defer_async()
        other = await app.configure_task("o").defer_async()
        w = await m.register_worker_async("w", "host", 1)
        claimed = await m.fetch_jobs_async(w, None, 10)
        assert sorted(job.id for job in claimed) == [job_id, other]
        assert await m.get_stalled_jobs() == []  # its worker beats
        await m.unregister_worker_async(w)  # gone without finishing: its jobs are stalled

        # procrastinate's async spelling, and ours
        stalled = await m.get_stalled_jobs(queue="q")
        assert [(j.id, j.status, j.attempts, j.claims) for j in stalled] == [
            (job_id, "doing", 0, 1)
        ]
        assert [j.id for j in await m.get_stalled_jobs_async(task_name="o")] == [other]
        assert await m.get_stalled_jobs(task_name="nope") == []

        assert await m.retry_job(stalled[0]) is True
        [requeued] = await m.list_jobs_async(id=job_id)
        assert (requeued.status, requeued.attempts, requeued.claims) == ("todo", 1, 1)
        assert await m.retry_job(stalled[0]) is False  # that claim is over: fenced out
        [again] = await m.fetch_jobs_async(await m.register_worker_async("w2", "host", 2), None, 1)
        assert (again.id, again.attempts, again.claims) == (job_id, 1, 2)
        assert await m.retry_job_async(stalled[0]) is False  # an older claim of a running job
        assert [j.id for j in await m.get_stalled_jobs()] == [other]


async def test_a_job_whose_worker_keeps_dying_ends_failed_after_the_bound(harness):
    """Migration 0007: each recovery is counted; the max_recoveries-th ends the job failed."""
    async with harness.app().open_async() as app:
        m = app.job_manager
        job_id = await app.configure_task("t").defer_async()
        statuses = []
        for _ in range(3):
            w = await m.register_worker_async("w", "h", 1)
            assert [j.id for j in await m.fetch_jobs_async(w, None, 1)] == [job_id]
            await m.unregister_worker_async(w)  # the worker died while running it
            statuses += await m.recover_stalled_jobs_async(3600, 3)
        assert statuses == [
            (job_id, pc.Status.TODO),
            (job_id, pc.Status.TODO),
            (job_id, pc.Status.FAILED),
        ]
        [job] = await m.list_jobs_async(id=job_id)
        assert job.status == "failed" and job.claims == 3
        assert job.error["type"] == "procrastinate_core.exceptions.PoisonJob"
        assert "its worker died while running it 3 times" in job.error["message"]
        events = [e["type"] for e in await m.list_job_events_async(job_id)]
        assert events == [
            "deferred",
            "started",
            "recovered",
            "started",
            "recovered",
            "started",
            "failed",
        ]
        # Without a bound (the default of the manager call), recovery always requeues.
        other = await app.configure_task("t").defer_async()
        for _ in range(4):
            w = await m.register_worker_async("w", "h", 1)
            await m.fetch_jobs_async(w, None, 1)
            await m.unregister_worker_async(w)
            assert await m.recover_stalled_jobs_async(3600) == [(other, pc.Status.TODO)]
