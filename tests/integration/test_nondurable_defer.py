"""durable=False (docs/durability.md): synchronous_commit is off in the defer's own
transaction, and nowhere else; refused where the defer would join a caller's transaction.

What the setting was is read from inside the inserting transaction itself: an
AFTER INSERT trigger (added for the test, removed after it) writes
current_setting('synchronous_commit') and the transaction id of every new job
to a side table. Every real connector runs these (the contract's cases, Django's
included); tests/pgbouncer/test_nondurable_through_pgbouncer.py runs them again
through PgBouncer in transaction and session mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions, manager
from tests.integration.connector_cases import (
    REAL,
    TRANSACTIONAL,
    Harness,
    _forget_django_aliases,  # noqa: F401 - autouse: Django aliases die with the test database
    _ids,
    _make_harness,
)
from tests.integration.worker_support import running_worker, wait_status

REAL_TRANSACTIONAL = [case for case in TRANSACTIONAL if case.real]

SPY = """
CREATE TABLE nondurable_spy (job_id bigint, setting text, xid xid8);
CREATE FUNCTION nondurable_spy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO nondurable_spy
    VALUES (NEW.id, current_setting('synchronous_commit'), pg_current_xact_id());
    RETURN NULL;
END $$;
CREATE TRIGGER nondurable_spy AFTER INSERT ON pcq_jobs
    FOR EACH ROW EXECUTE FUNCTION nondurable_spy();
"""
UNSPY = """
DROP TRIGGER IF EXISTS nondurable_spy ON pcq_jobs;
DROP FUNCTION IF EXISTS nondurable_spy();
DROP TABLE IF EXISTS nondurable_spy;
"""


@pytest.fixture(params=REAL, ids=_ids(REAL))
def real_harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


@pytest.fixture(params=REAL_TRANSACTIONAL, ids=_ids(REAL_TRANSACTIONAL))
def caller_harness(request: pytest.FixtureRequest) -> Harness:
    return _make_harness(request)


class Spy:
    def __init__(self, db_conn: Any) -> None:
        self.db_conn = db_conn

    def settings(self, job_ids: list[int]) -> list[str]:
        """synchronous_commit as each job's inserting transaction saw it, in job order."""
        rows = dict(
            self.db_conn.execute(
                "SELECT job_id, setting FROM nondurable_spy WHERE job_id = ANY(%s)", [job_ids]
            ).fetchall()
        )
        return [rows[job_id] for job_id in job_ids]

    def transactions(self, job_ids: list[int]) -> int:
        return self.db_conn.execute(
            "SELECT count(DISTINCT xid) FROM nondurable_spy WHERE job_id = ANY(%s)", [job_ids]
        ).fetchone()[0]


@pytest.fixture
def spy(db_conn: Any) -> Iterator[Spy]:
    db_conn.execute(UNSPY)
    db_conn.execute(SPY)
    try:
        yield Spy(db_conn)
    finally:
        db_conn.execute(UNSPY)


def test_only_the_nondurable_defers_own_transaction_has_synchronous_commit_off(real_harness, spy):
    with real_harness.app().open() as app:
        fast = app.configure_task("t", durable=False)
        before = app.configure_task("t").defer(n=0)
        off = fast.defer(n=1)
        after = app.configure_task("t").defer(n=2)  # the pool's connection again: no leak
        batch = fast.batch_defer({"n": 3}, {"n": 4}, {"n": 5})
        last = app.configure_task("t").defer(n=6)
    assert spy.settings([before, off, after]) == ["on", "off", "on"]
    assert spy.settings(batch) == ["off"] * 3 and spy.transactions(batch) == 1
    assert spy.settings([last]) == ["on"]
    assert [args["n"] for _, args in real_harness.jobs()] == list(range(7))


async def test_the_same_holds_for_the_async_forms(real_harness, spy):
    async with real_harness.app().open_async() as app:
        task = app.configure_task("t", durable=False)
        off = await task.defer_async(n=1)
        after = await app.configure_task("t").defer_async(n=2)
        batch = await task.batch_defer_async({"n": 3}, {"n": 4})
    assert spy.settings([off, after, *batch]) == ["off", "on", "off", "off"]
    assert spy.transactions(batch) == 1


def test_a_batch_sent_in_several_statements_is_one_nondurable_transaction(
    real_harness, spy, monkeypatch
):
    monkeypatch.setattr(manager, "DEFER_CHUNK_BYTES", 40)  # about two jobs per statement
    with real_harness.app().open() as app:
        ids = app.configure_task("t", durable=False).batch_defer(*({"n": n} for n in range(7)))
        after = app.configure_task("t").defer(n=7)
    assert spy.settings(ids) == ["off"] * 7 and spy.transactions(ids) == 1
    assert spy.settings([after]) == ["on"]


def _setting(conn: Any) -> str:
    """SHOW synchronous_commit on a caller's connection of any of the contract's libraries."""
    if hasattr(conn, "exec_driver_sql"):  # SQLAlchemy
        return str(conn.exec_driver_sql("SHOW synchronous_commit").scalar())
    cursor = conn.cursor()
    try:
        cursor.execute("SHOW synchronous_commit")
        return str(cursor.fetchone()[0])
    finally:
        cursor.close()


def test_refused_with_a_callers_connection_and_the_callers_transaction_is_untouched(
    caller_harness, spy
):
    case = caller_harness.case
    with caller_harness.app().open() as app:
        with case.transaction(caller_harness.url, True) as conn:
            with pytest.raises(exceptions.ConfigurationError, match="durable=False cannot"):
                app.configure_task("t", durable=False, connection=conn)
            job_id = app.configure_task("t", connection=conn).defer(n=1)  # still usable
            assert _setting(conn) == "on"
    assert spy.settings([job_id]) == ["on"]
    assert [args for _, args in caller_harness.jobs()] == [{"n": 1}]


@pytest.mark.parametrize("caller_harness", [c for c in REAL if c.name == "django"], indirect=True)
async def test_refused_inside_a_django_atomic_block_before_any_sql(caller_harness, spy):
    """DjangoConnector joins the caller's atomic block without connection=: refused there
    (sync and async forms), accepted outside it."""
    from asgiref.sync import sync_to_async

    case = caller_harness.case
    app = caller_harness.app()
    task = app.configure_task("t", durable=False)

    def inside_atomic() -> int:
        with case.transaction(caller_harness.url, True) as conn:
            with pytest.raises(exceptions.ConfigurationError, match="transaction.on_commit"):
                task.defer(n=0)
            with pytest.raises(exceptions.ConfigurationError, match=r"atomic\(\) block"):
                task.batch_defer({"n": 0})
            job_id = app.configure_task("t").defer(n=1)  # the atomic block is still usable
            assert _setting(conn) == "on"
            return job_id

    def outside_atomic() -> int:
        return task.defer(n=2)

    durable_id = await sync_to_async(inside_atomic)()
    nondurable_id = await sync_to_async(outside_atomic)()
    assert await task.defer_async(n=3) > 0  # from the event loop: Django's thread, no atomic
    assert spy.settings([durable_id, nondurable_id]) == ["on", "off"]
    assert [args["n"] for _, args in caller_harness.jobs()] == [1, 2, 3]


def test_flow_controlled_and_non_boolean_values_are_refused(app):
    @app.task(name="limited", concurrency_limit=1)
    def limited() -> None:
        pass

    with pytest.raises(exceptions.ConfigurationError, match="flow control"):
        limited.configure(durable=False)
    with pytest.raises(exceptions.ConfigurationError, match="expected True or False"):
        app.configure_task("t", durable="no")


async def test_a_nondurable_job_is_run_by_a_worker(db_dsn, spy):
    app = pc.App(connector=pc.PsycopgConnector(conninfo=db_dsn, min_size=1, max_size=4))
    ran: list[int] = []

    @app.task(name="nd")
    async def nd(n: int) -> None:
        ran.append(n)

    async with app.open_async():
        job_id = await nd.configure(durable=False).defer_async(n=5)
        async with running_worker(app):
            await wait_status(app, job_id, "succeeded", timeout=30)
    assert ran == [5] and spy.settings([job_id]) == ["off"]


def test_the_in_memory_connector_takes_a_nondurable_defer_as_a_defer():
    from procrastinate_core.testing import InMemoryConnector

    app = pc.App(connector=InMemoryConnector())
    with app.open():
        job_id = app.configure_task("t", durable=False).defer(n=1)
        ids = app.configure_task("t", durable=False).batch_defer({"n": 2}, {"n": 3})
        jobs = app.job_manager.list_jobs()
    assert [job.id for job in jobs] == [job_id, *ids]
    assert [job.task_kwargs for job in jobs] == [{"n": 1}, {"n": 2}, {"n": 3}]
