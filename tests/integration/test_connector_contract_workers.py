"""The connector contract, part two: workers and notifications, joining a caller's transaction,
migrations, and procrastinate's stalled-jobs recipe (part one: test_connector_contract.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import psycopg
import pytest

import procrastinate_core as pc
from procrastinate_core import exceptions, sql
from tests.integration.connector_cases import *  # noqa: F403 - the cases' fixtures
from tests.integration.connector_cases import (  # noqa: F401 - an autouse fixture
    REAL_ASYNC,
    _forget_django_aliases,
    _ids,
    url_of,
)


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
