"""JobManager against real PostgreSQL: inspection, actions, claim rules, fencing, recovery."""

import datetime

import pytest

from procrastinate_core import exceptions
from procrastinate_core.jobs import Status
from procrastinate_core.worker_operations import JobOutcome


@pytest.fixture
def defer(app):
    def defer(name="t", **options):
        return app.configure_task(name, **options).defer()

    return defer


@pytest.fixture
def manager(app):
    return app.job_manager


def test_list_and_filter(defer, manager):
    a = defer("a", queue="q1", lock="L")
    b = defer("b", queue="q2", queueing_lock="Q")
    assert [j.id for j in manager.list_jobs()] == [a, b]
    assert [j.id for j in manager.list_jobs(queue="q2")] == [b]
    assert [j.id for j in manager.list_jobs(task="a")] == [a]
    assert [j.id for j in manager.list_jobs(lock="L")] == [a]
    assert [j.id for j in manager.list_jobs(queueing_lock="Q")] == [b]
    assert [j.id for j in manager.list_jobs(status="todo", id=b)] == [b]
    assert manager.list_jobs(status=Status.FAILED) == []
    with pytest.raises(ValueError):
        manager.list_jobs(status="finished")


def test_status_and_missing_job(defer, manager):
    job_id = defer()
    assert manager.get_job_status(job_id) is Status.TODO
    with pytest.raises(exceptions.JobNotFound, match="no job with id 999999"):
        manager.get_job_status(999999)


def test_counts_by_queue_task_lock(defer, manager):
    defer("a", queue="q1", lock="L")
    defer("a", queue="q1")
    defer("b", queue="q2", lock="L")
    queues = {q["name"]: q for q in manager.list_queues()}
    assert queues["q1"]["jobs_count"] == 2 and queues["q1"]["todo"] == 2
    assert queues["q2"]["failed"] == 0
    tasks = {t["name"]: t["jobs_count"] for t in manager.list_tasks()}
    assert tasks == {"a": 2, "b": 1}
    locks = {lock["name"]: lock["jobs_count"] for lock in manager.list_locks(lock="L")}
    assert locks == {"L": 2}


async def test_claim_order_priority_then_defer_order(async_app):
    manager = async_app.job_manager
    low = await async_app.configure_task("t", priority=0).defer_async()
    high = await async_app.configure_task("t", priority=10).defer_async()
    low2 = await async_app.configure_task("t", priority=0).defer_async()
    later = await async_app.configure_task("t", schedule_in={"hours": 1}).defer_async()
    worker = await manager.register_worker_async("w")
    jobs = await manager.fetch_jobs_async(worker, None, 10)
    assert [j.id for j in jobs] == [high, low, low2]
    assert later not in [j.id for j in jobs]
    assert all(j.claims == 1 and j.attempts == 0 and j.status == "doing" for j in jobs)


async def test_claim_respects_queues_and_limit(async_app):
    manager = async_app.job_manager
    ids = [await async_app.configure_task("t", queue=q).defer_async() for q in "abab"]
    worker = await manager.register_worker_async("w")
    got = await manager.fetch_jobs_async(worker, ["b"], 1)
    assert [j.id for j in got] == [ids[1]]
    got = await manager.fetch_jobs_async(worker, ["b", "a"], 10)
    assert sorted(j.id for j in got) == sorted([ids[0], ids[2], ids[3]])


async def test_lock_lets_one_job_run_at_a_time_in_order(async_app):
    manager = async_app.job_manager
    first = await async_app.configure_task("t", lock="L").defer_async()
    second = await async_app.configure_task("t", lock="L").defer_async()
    free = await async_app.configure_task("t").defer_async()
    urgent = await async_app.configure_task("t", lock="L", priority=5).defer_async()
    worker = await manager.register_worker_async("w")
    got = await manager.fetch_jobs_async(worker, None, 10)
    # Priority wins within a lock; one L job at most; unlocked jobs are free.
    assert sorted(j.id for j in got) == sorted([urgent, free])
    assert await manager.fetch_jobs_async(worker, None, 10) == []
    [u] = [j for j in got if j.id == urgent]
    await manager.finish_jobs_async(
        [JobOutcome(job_id=u.id, worker_id=worker, attempt=1, status=Status.SUCCEEDED)]
    )
    assert [j.id for j in await manager.fetch_jobs_async(worker, None, 10)] == [first]
    assert second != first


async def test_scheduled_lock_job_does_not_block_ready_ones(async_app):
    """procrastinate issue 1599: a lock job scheduled later must not block ready ones."""
    manager = async_app.job_manager
    await async_app.configure_task("t", lock="L", schedule_in={"hours": 1}).defer_async()
    ready = await async_app.configure_task("t", lock="L").defer_async()
    worker = await manager.register_worker_async("w")
    assert [j.id for j in await manager.fetch_jobs_async(worker, None, 10)] == [ready]


async def test_finish_is_fenced_on_worker_and_attempt(async_app, db_conn):
    manager = async_app.job_manager
    job_id = await async_app.configure_task("t").defer_async()
    w1 = await manager.register_worker_async("w1")
    [job] = await manager.fetch_jobs_async(w1, None, 1)
    # The worker is considered dead: its job is recovered and run by another one.
    db_conn.execute(
        "UPDATE pcq_workers SET last_heartbeat = now() - interval '1 hour' WHERE id = %s", [w1]
    )
    recovered = await manager.recover_stalled_jobs_async(30)
    assert recovered == [(job_id, Status.TODO)]
    assert await manager.update_heartbeat_async(w1) is False  # its row was pruned
    w2 = await manager.register_worker_async("w2")
    [again] = await manager.fetch_jobs_async(w2, None, 1)
    assert (again.claims, again.attempts) == (2, 1)
    late = JobOutcome(job_id=job_id, worker_id=w1, attempt=1, status=Status.FAILED)
    assert await manager.finish_jobs_async([late]) == set()  # lost ownership: refused
    good = JobOutcome(
        job_id=job_id, worker_id=w2, attempt=2, status=Status.SUCCEEDED, result={"ok": 1}
    )
    assert await manager.finish_jobs_async([good]) == {job_id}
    [done] = await manager.list_jobs_async(id=job_id)
    assert (done.status, done.result, done.claims) == ("succeeded", {"ok": 1}, 2)
    events = [e["type"] for e in await manager.list_job_events_async(job_id)]
    assert events == ["deferred", "started", "recovered", "started", "succeeded"]


async def test_finish_many_with_retry_delete_and_error(async_app, db_conn):
    manager = async_app.job_manager
    ids = [await async_app.configure_task("t").defer_async() for _ in range(3)]
    w = await manager.register_worker_async("w")
    await manager.fetch_jobs_async(w, None, 3)
    retry_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    outcomes = [
        JobOutcome(
            job_id=ids[0],
            worker_id=w,
            attempt=1,
            status=Status.TODO,
            retry_at=retry_at,
            priority=9,
            queue="other",
            lock="new",
        ),
        JobOutcome(job_id=ids[1], worker_id=w, attempt=1, status=Status.SUCCEEDED, delete_job=True),
        JobOutcome(
            job_id=ids[2],
            worker_id=w,
            attempt=1,
            status=Status.FAILED,
            error={"type": "ValueError", "message": "boom", "traceback": "..."},
        ),
    ]
    assert await manager.finish_jobs_async(outcomes) == set(ids)
    row = db_conn.execute(
        "SELECT status, scheduled_at, priority, queue_name, lock FROM pcq_jobs WHERE id = %s",
        [ids[0]],
    ).fetchone()
    assert row == ("todo", retry_at, 9, "other", "new")
    assert (
        db_conn.execute("SELECT count(*) FROM pcq_jobs WHERE id = %s", [ids[1]]).fetchone()[0] == 0
    )
    [failed] = await manager.list_jobs_async(id=ids[2])
    assert failed.status == "failed" and failed.error["message"] == "boom"


def test_cancel_abort_and_delete(defer, manager, db_conn):
    todo = defer()
    assert manager.cancel_job_by_id(todo) is True
    assert manager.get_job_status(todo) is Status.CANCELLED
    assert manager.cancel_job_by_id(todo) is False  # already finished
    doing = defer()
    db_conn.execute("UPDATE pcq_jobs SET status = 'doing' WHERE id = %s", [doing])
    assert manager.cancel_job_by_id(doing) is False  # running, and no abort asked
    assert manager.cancel_job_by_id(doing, abort=True) is True
    assert db_conn.execute(
        "SELECT abort_requested FROM pcq_jobs WHERE id = %s", [doing]
    ).fetchone() == (True,)
    deleted = defer()
    assert manager.cancel_job_by_id(deleted, delete_job=True) is True
    assert manager.list_jobs(id=deleted) == []


def test_abort_request_is_notified_at_commit(defer, manager, db_dsn, db_conn):
    import psycopg

    doing = defer()
    db_conn.execute("UPDATE pcq_jobs SET status = 'doing' WHERE id = %s", [doing])
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        listener.execute("LISTEN pcq_abort")
        manager.cancel_job_by_id(doing, abort=True)
        notifies = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in notifies] == [("pcq_abort", str(doing))]


def test_manual_retry_of_finished_jobs(defer, manager, db_conn):
    job_id = defer(queueing_lock="Q")
    db_conn.execute(
        "UPDATE pcq_jobs SET status = 'failed', attempts = 3, finished_at = now() WHERE id = %s",
        [job_id],
    )
    assert manager.retry_job_by_id(job_id, priority=4) is True
    [job] = manager.list_jobs(id=job_id)
    assert (job.status, job.priority, job.attempts, job.finished_at) == ("todo", 4, 3, None)
    assert manager.retry_job_by_id(job_id) is False  # waiting jobs are not retried
    db_conn.execute("UPDATE pcq_jobs SET status = 'failed' WHERE id = %s", [job_id])
    defer(queueing_lock="Q")
    with pytest.raises(exceptions.AlreadyEnqueued):
        manager.retry_job_by_id(job_id)


def test_delete_old_jobs(defer, manager, db_conn):
    ids = {status: defer(queue="q") for status in ("succeeded", "failed", "cancelled", "aborted")}
    recent = defer(queue="q")
    for status, job_id in ids.items():
        db_conn.execute(
            "UPDATE pcq_jobs SET status = %s, finished_at = now() - interval '3 hours' WHERE "
            "id = %s",
            [status, job_id],
        )
    db_conn.execute(
        "UPDATE pcq_jobs SET status = 'succeeded', finished_at = now() WHERE id = %s", [recent]
    )
    assert manager.delete_old_jobs(2) == 1
    assert manager.delete_old_jobs(2, queue="other", include_failed=True) == 0
    assert (
        manager.delete_old_jobs(
            2, include_failed=True, include_cancelled=True, include_aborted=True
        )
        == 3
    )
    assert [j.id for j in manager.list_jobs()] == [recent]


async def test_recovery_marks_abort_requested_jobs_aborted_and_superseded_ones_cancelled(
    async_app, db_conn
):
    manager = async_app.job_manager
    aborting = await async_app.configure_task("t").defer_async()
    superseded = await async_app.configure_task("t", queueing_lock="Q").defer_async()
    w = await manager.register_worker_async("w")
    await manager.fetch_jobs_async(w, None, 10)
    newer = await async_app.configure_task("t", queueing_lock="Q").defer_async()
    await manager.cancel_job_by_id_async(aborting, abort=True)
    await manager.unregister_worker_async(w)
    recovered = dict(await manager.recover_stalled_jobs_async(30))
    assert recovered == {aborting: Status.ABORTED, superseded: Status.CANCELLED}
    assert await manager.get_job_status_async(newer) is Status.TODO


async def test_periodic_tick_is_deferred_once(async_app):
    from procrastinate_core.tasks import make_job

    manager = async_app.job_manager
    job = make_job("p", task_kwargs={"timestamp": 100})
    first = await manager.defer_periodic_job_async(job, "", 100)
    assert isinstance(first, int)
    assert await manager.defer_periodic_job_async(job, "", 100) is None
    assert await manager.defer_periodic_job_async(job, "other", 100) is not None
    assert await manager.prune_periodic_defers_async(101) == 2


def test_workers_list_and_unregister(manager):
    w = manager.register_worker("w", "host", 123)
    [row] = manager.list_workers()
    assert (row["id"], row["name"], row["host"], row["pid"]) == (w, "w", "host", 123)
    assert row["heartbeat_age"] < 60
    assert manager.update_heartbeat(w) is True
    manager.unregister_worker(w)
    assert manager.list_workers() == []


async def test_deleting_jobs_deletes_their_events_and_only_theirs(async_app, db_conn):
    """Migration 0003 replaced the events' foreign key by a delete trigger: every way
    a job is deleted (worker outcome, admin delete, cleanup, by hand) takes its events."""
    manager = async_app.job_manager
    ids = [await async_app.configure_task("t").defer_async() for _ in range(5)]
    w = await manager.register_worker_async("w")
    await manager.fetch_jobs_async(w, None, 2)
    await manager.finish_jobs_async(
        [
            JobOutcome(
                job_id=ids[0], worker_id=w, attempt=1, status=Status.SUCCEEDED, delete_job=True
            ),
            JobOutcome(job_id=ids[1], worker_id=w, attempt=1, status=Status.SUCCEEDED),
        ]
    )

    def events() -> dict[int, int]:
        rows = db_conn.execute("SELECT job_id, count(*) FROM pcq_events GROUP BY job_id").fetchall()
        return dict(rows)

    assert events() == {ids[1]: 3, ids[2]: 1, ids[3]: 1, ids[4]: 1}
    assert await manager.delete_finished_job_by_id_async(ids[1]) is True
    db_conn.execute(
        "UPDATE pcq_jobs SET status = 'failed', finished_at = now() - interval '3 hours' "
        "WHERE id = %s",
        [ids[2]],
    )
    assert await manager.delete_old_jobs_async(2, include_failed=True) == 1
    db_conn.execute("DELETE FROM pcq_jobs WHERE id = %s", [ids[3]])
    assert events() == {ids[4]: 1}
    assert [e["type"] for e in await manager.list_job_events_async(ids[4])] == ["deferred"]
    fks = db_conn.execute(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'pcq_events'::regclass AND "
        "contype = 'f'"
    ).fetchone()[0]
    assert fks == 0


async def test_truncating_jobs_empties_events_so_a_reused_id_has_no_old_history(async_app, db_conn):
    """Migration 0004: TRUNCATE fires no DELETE trigger; without its own trigger the
    events stayed, and after RESTART IDENTITY a new job showed its predecessor's history."""
    manager = async_app.job_manager
    old = await async_app.configure_task("old").defer_async()
    w = await manager.register_worker_async("w")
    await manager.fetch_jobs_async(w, None, 1)
    db_conn.execute("TRUNCATE pcq_jobs RESTART IDENTITY")
    assert db_conn.execute("SELECT count(*) FROM pcq_events").fetchone()[0] == 0
    new = await async_app.configure_task("new").defer_async()
    assert new == old
    assert [e["type"] for e in await manager.list_job_events_async(new)] == ["deferred"]
    db_conn.execute("TRUNCATE pcq_jobs, pcq_events")  # naming both still works
    assert db_conn.execute("SELECT count(*) FROM pcq_events").fetchone()[0] == 0
